"""The encrypted transformer block from Python: approximations, mirror, encrypted runs."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from blindfed import ckks
from blindfed.approx import Approximation
from blindfed.block import Block, PackedBatch, random_weights


@pytest.mark.parametrize(
    ("approx", "abs_bound"),
    [
        (Approximation.exp_squaring(6, -4.0, 2.0), 0.3),
        (Approximation.exp_chebyshev(-8.0, 4.0, 15), 1e-5),
        (Approximation.exp_taylor(-2.0, 2.0), 0.04),
        (Approximation.goldschmidt(11, 1.0, 100.0), 1e-4),
        (Approximation.inv_sqrt(0.1, 10.0), 1e-3),
        (Approximation.gelu_chebyshev(-6.0, 6.0, 15), 1e-2),
    ],
)
def test_approximations_are_accurate_on_their_range(approx, abs_bound):
    abs_err, _ = approx.max_error()
    assert abs_err < abs_bound, f"{approx}: {abs_err}"
    lo, hi = approx.range
    xs = np.linspace(lo, hi, 101)
    assert np.max(np.abs(approx(xs) - approx.exact(xs))) <= abs_err * 1.0001


def test_quad_gelu_is_the_papers_polynomial():
    quad = Approximation.gelu_quad()
    xs = np.array([-2.0, 0.0, 1.0])
    np.testing.assert_allclose(quad(xs), 0.125 * xs**2 + 0.25 * xs + 0.5)
    assert quad.steps() == [
        {"op": "polynomial", "basis": "power", "coefficients": [0.5, 0.25, 0.125]}
    ]


def test_calibration_and_range_detection():
    data = np.random.default_rng(0).uniform(-3.0, 1.0, 1000)
    exp = Approximation.exp_squaring(6, -1.0, 1.0).calibrated(data, margin=0.1)
    lo, hi = exp.range
    assert lo < -3.0 and hi > 1.0
    assert exp.out_of_range(data) == 0
    assert exp.out_of_range(np.array([lo - 1.0, hi + 1.0, 0.0])) == 2


def digits_tokens(n: int) -> np.ndarray:
    """Realistic activations: sklearn digits, 4 patches of 4x4 pixels plus a class token,
    through a random patch embedding (width 16)."""
    images = load_digits().images[:n] / 16.0
    patches = images.reshape(n, 2, 4, 2, 4).transpose(0, 1, 3, 2, 4).reshape(n, 4, 16)
    rng = np.random.default_rng(7)
    embed = rng.normal(0.0, 0.5, size=(16, 16))
    tokens = patches @ embed
    cls = np.broadcast_to(rng.normal(size=(1, 1, 16)), (n, 1, 16))
    return np.concatenate([cls, tokens], axis=1) + rng.normal(0.0, 0.1, size=(1, 5, 16))


def make_block(x: np.ndarray, seed: int) -> Block:
    return Block(random_weights(16, 32, seed=seed), tokens=5, heads=2).calibrated(x)


def test_mirror_equals_forward_on_realistic_activations():
    x = digits_tokens(20)
    block = make_block(x, 1)
    params = ckks.Parameters(12, 30, 30, insecure=True)
    np.testing.assert_allclose(block.mirror(x, params=params), block.forward(x), atol=1e-9)


@pytest.fixture(scope="module")
def small_keys():
    params = ckks.Parameters(10, 30, 30, insecure=True)
    sk = ckks.SecretKey.generate(params)
    probe = Block(random_weights(16, 32), tokens=5, heads=2)
    keys = sk.evaluation_keys(rotations=probe.rotation_steps(params), conjugate=True)
    return params, sk, keys


def test_encrypted_stack_of_four_blocks_on_digits(small_keys):
    _, sk, keys = small_keys
    x = digits_tokens(12)
    blocks, act = [], x
    for i in range(4):
        blocks.append(make_block(act, 10 + i))
        act = blocks[-1].forward(act)
    enc_in = x
    for block in blocks:
        packed = PackedBatch.encrypt(sk, enc_in)  # the owner re-encrypts between blocks
        out, cost = block.evaluate(packed, keys, sk)
        assert cost["key_switches"] > 0
        enc_in = out.decrypt(sk)
    err = np.max(np.abs(enc_in - act))
    assert err < 1e-3 * np.ptp(act), (err, np.ptp(act))


def test_packed_batch_bytes_round_trip_and_malformed(small_keys):
    params, sk, _ = small_keys
    x = digits_tokens(3)
    packed = PackedBatch.encrypt(sk, x)
    data = packed.to_bytes()
    back = PackedBatch.from_bytes(params, data)
    assert back.shape == (3, 5, 16) and back.complex and back.ciphertexts == 8
    real = PackedBatch.encrypt(sk, x, complex=False)
    assert real.ciphertexts == 16 and len(real.to_bytes()) > 1.9 * len(data)
    np.testing.assert_allclose(real.decrypt(sk), x, atol=1e-5)
    np.testing.assert_allclose(back.decrypt(sk), x, atol=1e-5)
    for bad in (
        data[:-1],
        data + b"\0",
        b"BFPK" + data[4:20],
        data[:6] + b"\xff" * 16 + data[22:],
        data[:5] + b"\x02" + data[6:],
    ):
        with pytest.raises(ckks.MalformedDataError):
            PackedBatch.from_bytes(params, bad)


def test_clear_errors(small_keys):
    _, sk, _ = small_keys
    x = digits_tokens(2)
    block = make_block(x, 3)
    with pytest.raises(ValueError, match="shape"):
        block.forward(x[:, :4])
    weights = random_weights(16, 32)
    weights["wq"] = weights["wq"][:, :15]
    with pytest.raises(ValueError):
        Block(weights, tokens=5, heads=2)
    with pytest.raises(ValueError, match="missing weight"):
        Block({"wq": np.eye(2)}, tokens=5, heads=2)
    no_rotations = sk.evaluation_keys(rotations=[1], conjugate=True)
    with pytest.raises(ckks.MissingKeyError):
        block.evaluate(PackedBatch.encrypt(sk, x), no_rotations, sk)
    with pytest.raises(ckks.MissingKeyError, match="conjugation"):
        block.evaluate(PackedBatch.encrypt(sk, x), sk.evaluation_keys(rotations=[1]), sk)
    too_shallow = ckks.Parameters(10, 6, 30, insecure=True)
    with pytest.raises(ckks.CkksError, match="levels"):
        block.mirror(x, params=too_shallow)


def test_bad_choices_are_clear_errors():
    from blindfed.approx import StudentSpec

    x = digits_tokens(8)
    # Unknown kinds and malformed texts name the text.
    for text in ("chebyshev:x", "sine:3", "power:3", "exp:chebyshev:15:2"):
        with pytest.raises(ValueError, match=text):
            Approximation.parse("numerator", text)
    with pytest.raises(ValueError, match="denominator"):
        StudentSpec("denominator=max")
    # A range that does not contain the data is refused, naming the approximation.
    weights = random_weights(16, 32, seed=3)
    narrow = {"numerator": Approximation.exp_chebyshev(-0.01, 0.01)}
    block = Block(weights, tokens=5, heads=2, approx=narrow)
    with pytest.raises(ValueError, match="numerator's range"):
        block.check_ranges(x)
    Block(weights, tokens=5, heads=2).calibrated(x).check_ranges(x)
    # A block no 128-bit ring carries (more tokens than any ring has slots).
    wide = Block(random_weights(4, 8), tokens=40_000, heads=1)
    with pytest.raises(ckks.CkksError, match="no 128-bit parameter set"):
        wide.plan()
