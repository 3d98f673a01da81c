"""The CKKS engine through the Python bindings: results match numpy within the precision the
parameters promise, and misuse gives clear exceptions."""

import numpy as np
import pytest

import blindfed
from blindfed import ckks

TOL = 1e-6  # fresh ciphertexts at a 2^40 scale decrypt to ~2^-25; one product to ~2^-20


def test_round_trip_real_and_complex(owner, keys, rng):
    x = rng.uniform(-1, 1, 1024)
    for ct in (owner.encrypt(x), keys.encrypt(x), keys.public_key.encrypt(x)):
        assert ct.slots == 1024 and ct.level == 3 and ct.size == 2
        np.testing.assert_allclose(owner.decrypt(ct), x, atol=TOL)
    z = x + 1j * rng.uniform(-1, 1, 1024)
    out = owner.decrypt(owner.encrypt(z), complex=True)
    assert out.dtype == np.complex128
    np.testing.assert_allclose(out, z, atol=TOL)


def test_short_inputs_pad_to_a_power_of_two(owner):
    out = owner.decrypt(owner.encrypt([1.0, 2.0, 3.0]))
    assert out.shape == (4,)
    np.testing.assert_allclose(out, [1, 2, 3, 0], atol=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_arithmetic_matches_numpy(owner, keys, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1, 1, (2, 1024))
    a, b = owner.encrypt(x).with_keys(keys), keys.encrypt(y)
    cases = {
        "a + b": (a + b, x + y),
        "a - b": (a - b, x - y),
        "-a": (-a, -x),
        "a * b": (a * b, x * y),
        "a + 0.5": (a + 0.5, x + 0.5),
        "0.5 - a": (0.5 - a, 0.5 - x),
        "2 * a": (2 * a, 2 * x),
        "a * y": (a * y, x * y),
        "a + y": (a + y, x + y),
        "y - a": (y - a, y - x),
        "a * a * b": (a * a * b, x * x * y),
        "(a * b) + a": ((a * b) + a, x * y + x),
    }
    for name, (ct, expected) in cases.items():
        np.testing.assert_allclose(owner.decrypt(ct), expected, atol=1e-5, err_msg=name)


def test_multiply_consumes_one_level_at_canonical_scale(params, owner, keys, rng):
    x = rng.uniform(-1, 1, 256)
    a = owner.encrypt(x).with_keys(keys)
    prod = a * a
    assert prod.level == a.level - 1
    assert prod.scale == pytest.approx(params.scale_at(prod.level), rel=1e-12)
    raw = a.multiply(a, relinearize=False, rescale=False)
    assert raw.size == 3 and raw.level == a.level
    np.testing.assert_allclose(owner.decrypt(raw), x * x, atol=TOL)
    np.testing.assert_allclose(owner.decrypt(raw.relinearize().rescale()), x * x, atol=TOL)


def test_rotations_and_conjugation(owner, keys, rng):
    x = rng.uniform(-1, 1, 1024)
    a = owner.encrypt(x).with_keys(keys)
    for step in (1, 2, -3, 0):
        np.testing.assert_allclose(owner.decrypt(a.rotate(step)), np.roll(x, -step), atol=TOL)
    many = a.rotate_many([1, 2, -3])
    for step, ct in zip([1, 2, -3], many, strict=True):
        np.testing.assert_allclose(owner.decrypt(ct), np.roll(x, -step), atol=TOL)
    z = x + 0.5j
    conj = owner.encrypt(z).with_keys(keys).conjugate()
    np.testing.assert_allclose(owner.decrypt(conj, complex=True), np.conj(z), atol=TOL)


def test_everything_serialises(params, owner, keys, rng):
    x = rng.uniform(-1, 1, 512)
    p2 = ckks.Parameters.from_bytes(params.to_bytes())
    assert p2 == params and p2.moduli == params.moduli
    k2 = ckks.EvaluationKeys.from_bytes(p2, keys.to_bytes())
    seeded = owner.encrypt(x)
    full = keys.encrypt(x)
    assert seeded.is_seeded and not full.is_seeded
    assert len(seeded.to_bytes()) < 0.6 * len(full.to_bytes())
    ct = ckks.Ciphertext.from_bytes(p2, seeded.to_bytes(), keys=k2)
    np.testing.assert_allclose(owner.decrypt(ct.rotate(1) * ct), np.roll(x, -1) * x, atol=1e-5)
    for cls, obj in [
        (ckks.PublicKey, keys.public_key),
        (ckks.RelinKey, keys.relin_key),
        (ckks.GaloisKeys, keys.galois_keys),
    ]:
        assert cls.from_bytes(params, obj.to_bytes()).to_bytes() == obj.to_bytes()
    pt = ckks.Plaintext.encode(params, x)
    np.testing.assert_allclose(
        ckks.Plaintext.from_bytes(params, pt.to_bytes()).decode(), x, atol=1e-9
    )


def test_secret_key_cannot_be_serialised(owner):
    assert not hasattr(owner, "to_bytes")
    assert "redacted" in repr(owner)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(owner)


def test_insecure_parameters_are_refused():
    with pytest.raises(ckks.InsecureParametersError, match="218"):
        ckks.Parameters(13, 4, 40)
    with pytest.raises(ckks.InsecureParametersError):
        ckks.Parameters(11, 3, 40)
    assert ckks.Parameters(14, 7).is_secure
    assert not ckks.Parameters(11, 3, insecure=True).is_secure
    with pytest.raises(ValueError, match="log_n"):
        ckks.Parameters(2, 1, insecure=True)


def test_malformed_bytes_are_value_errors(params):
    for cls in (
        ckks.Ciphertext,
        ckks.PublicKey,
        ckks.RelinKey,
        ckks.GaloisKeys,
        ckks.Plaintext,
        ckks.EvaluationKeys,
    ):
        for data in (b"", b"BFHE", b"\x00" * 100, bytes(range(256))):
            with pytest.raises(ValueError):
                cls.from_bytes(params, data)
    with pytest.raises(ckks.MalformedDataError):
        ckks.Parameters.from_bytes(b"garbage")


def test_truncated_and_foreign_ciphertexts(params, owner, rng):
    data = owner.encrypt(rng.uniform(-1, 1, 8)).to_bytes()
    for cut in (0, 7, 40, len(data) // 2, len(data) - 1):
        with pytest.raises(ckks.MalformedDataError):
            ckks.Ciphertext.from_bytes(params, data[:cut])
    other = ckks.Parameters(11, 2, 40, insecure=True)
    with pytest.raises(ckks.MalformedDataError, match="different parameter set"):
        ckks.Ciphertext.from_bytes(other, data)


def test_misuse_gives_clear_errors(params, owner, keys, rng):
    x = rng.uniform(-1, 1, 16)
    bare = owner.encrypt(x)
    with pytest.raises(ckks.MissingKeyError, match="relinearisation"):
        bare * bare
    with pytest.raises(ckks.MissingKeyError, match="Galois"):
        bare.rotate(1)
    with pytest.raises(ckks.MissingKeyError, match="rotation by 5"):
        bare.with_keys(keys).rotate(5)
    with pytest.raises(ValueError, match="between 1 and"):
        owner.encrypt(np.zeros(params.slots + 1))
    with pytest.raises(ValueError, match="not finite"):
        owner.encrypt([1.0, float("nan")])
    with pytest.raises(ValueError, match="too large"):
        owner.encrypt([1e30])
    with pytest.raises(TypeError):
        owner.encrypt("not numbers")
    with pytest.raises(TypeError):
        bare + "text"
    other_owner = ckks.SecretKey.generate(ckks.Parameters(11, 2, 40, insecure=True))
    with pytest.raises(ckks.CkksError, match="different parameter sets"):
        other_owner.decrypt(bare)
    low = bare
    for _ in range(3):
        low = low.with_keys(keys) * 1.0
    assert low.level == 0
    with pytest.raises(ckks.CkksError, match="level 0"):
        low * 1.0


def test_levels_are_aligned_automatically(owner, keys, rng):
    x = rng.uniform(-1, 1, 64)
    a = owner.encrypt(x).with_keys(keys)
    deep = a * a * a  # level 1
    np.testing.assert_allclose(owner.decrypt(deep + a), x**3 + x, atol=1e-5)
    np.testing.assert_allclose(owner.decrypt(a - deep), x - x**3, atol=1e-5)
    np.testing.assert_allclose(owner.decrypt(deep * a), x**4, atol=1e-5)


def test_thread_count_is_settable(owner, rng):
    before = blindfed.num_threads()
    try:
        blindfed.set_num_threads(1)
        assert blindfed.num_threads() == 1
        with pytest.raises(ValueError, match="at most"):
            blindfed.set_num_threads(10**6)
        with pytest.raises(OverflowError):
            blindfed.set_num_threads(-1)
        x = rng.uniform(-1, 1, 64)
        np.testing.assert_allclose(owner.decrypt(owner.encrypt(x)), x, atol=TOL)
    finally:
        blindfed.set_num_threads(before)


def test_concurrent_use_from_python_threads(owner, keys, rng):
    # Heavy calls release the GIL, so ciphertexts can be processed from several threads.
    from concurrent.futures import ThreadPoolExecutor

    xs = rng.uniform(-1, 1, (6, 256))
    cts = [owner.encrypt(x).with_keys(keys) for x in xs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        squares = list(pool.map(lambda ct: owner.decrypt(ct * ct), cts))
    for x, sq in zip(xs, squares, strict=True):
        np.testing.assert_allclose(sq, x * x, atol=1e-5)
