"""CPU baseline for the CKKS benchmark: Microsoft SEAL timed through ``tenseal.sealapi``.

The parameters mirror our engine: ring degree ``N = 2**log_n`` and coefficient modulus
``[first_bits] + [scale_bits] * levels + [special_bits]`` (SEAL uses the last prime as the special
key-switching prime). SEAL's evaluator is single-threaded, so ``threads`` is always 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from blindfed.experiments.bench.timing import median_seconds, precision_bits


def seal_available() -> bool:
    """Return True if TenSEAL's low-level SEAL bindings (``tenseal.sealapi``) can be imported."""
    try:
        from tenseal import sealapi  # noqa: F401
    except ImportError:
        return False
    return True


def seal_ckks_timings(
    log_n: int,
    levels: int,
    scale_bits: int = 40,
    *,
    first_bits: int = 60,
    special_bits: int = 60,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Time SEAL's CKKS operations on our engine's parameter set.

    Args:
        log_n: log2 of the ring degree N.
        levels: number of ``scale_bits`` primes between the first and the special prime.
        scale_bits: bit size of the rescaling primes; the encoding scale is ``2**scale_bits``.
        first_bits: bit size of the first (base) prime.
        special_bits: bit size of the special key-switching prime (SEAL's last prime).
        repeats: timed runs per operation; the median is reported.
        seed: seed of numpy's ``default_rng`` for the N/2 inputs uniform in [-1, 1].

    Returns:
        A dict with ``library``, ``version``, ``log_n``, ``levels``, ``scale_bits``, ``threads``,
        ``seconds`` (median seconds per op; ``rotate_hoisted_8`` is the total for 8 separate
        rotations by steps 1..8, since SEAL has no hoisting) and ``precision_bits`` (for encrypt,
        multiply_relin_rescale, multiply_plain and rotate).

    Raises:
        RuntimeError: if ``tenseal`` is not installed.
        ValueError: if SEAL refuses the parameter set at 128-bit security (e.g. N = 2**16, which
            is beyond SEAL's HomomorphicEncryption.org table, or a modulus that is too large).
    """
    if not seal_available():
        raise RuntimeError("tenseal is not installed; the SEAL baseline is unavailable")
    import tenseal
    from tenseal import sealapi

    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    n = 1 << log_n
    bit_sizes = [first_bits] + [scale_bits] * levels + [special_bits]
    try:
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(n)
        parms.set_coeff_modulus(sealapi.CoeffModulus.Create(n, bit_sizes))
        ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    except Exception as exc:  # SEAL throws for e.g. an unsupported degree or prime size
        raise ValueError(f"SEAL refused N=2^{log_n}, moduli {bit_sizes}: {exc}") from exc
    if not ctx.parameters_set():
        max_bits = sealapi.CoeffModulus.MaxBitCount(n, sealapi.SEC_LEVEL_TYPE.TC128)
        raise ValueError(
            f"SEAL refused N=2^{log_n}, moduli {bit_sizes} ({sum(bit_sizes)} bits; TC128 max "
            f"{max_bits}): {ctx.parameters_error_name()}: {ctx.parameters_error_message()}"
        )

    keygen = sealapi.KeyGenerator(ctx)
    pk, rlk, gk = sealapi.PublicKey(), sealapi.RelinKeys(), sealapi.GaloisKeys()
    keygen.create_public_key(pk)
    keygen.create_relin_keys(rlk)
    # The bound overload taking list[int] expects Galois elements, not steps: SEAL maps a left
    # rotation by k > 0 to the element 3**k mod 2N.
    keygen.create_galois_keys([pow(3, k, 2 * n) for k in range(1, 9)], gk)
    encoder = sealapi.CKKSEncoder(ctx)
    encryptor = sealapi.Encryptor(ctx, pk)
    decryptor = sealapi.Decryptor(ctx, keygen.secret_key())
    evaluator = sealapi.Evaluator(ctx)

    scale = float(2**scale_bits)
    top = ctx.first_parms_id()
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n // 2)
    y = rng.uniform(-1.0, 1.0, n // 2)
    x_list, y_list = x.tolist(), y.tolist()

    def encode(values: list[float], parms_id: list[int], at_scale: float) -> Any:
        pt = sealapi.Plaintext()
        encoder.encode(values, parms_id, at_scale, pt)
        return pt

    def decrypt_decode(ct: Any) -> np.ndarray:
        pt = sealapi.Plaintext()
        decryptor.decrypt(ct, pt)
        return np.asarray(encoder.decode_double(pt))

    pt_x, pt_y = encode(x_list, top, scale), encode(y_list, top, scale)
    ct_x, ct_y = sealapi.Ciphertext(ctx), sealapi.Ciphertext(ctx)
    encryptor.encrypt(pt_x, ct_x)
    encryptor.encrypt(pt_y, ct_y)
    out_pt = sealapi.Plaintext()
    out = sealapi.Ciphertext(ctx)

    def mul_relin_rescale() -> None:
        evaluator.multiply(ct_x, ct_y, out)
        evaluator.relinearize_inplace(out, rlk)
        evaluator.rescale_to_next_inplace(out)

    pt_y_at_ct = encode(y_list, ct_x.parms_id(), ct_x.scale)

    def rotate_8() -> None:
        for step in range(1, 9):
            evaluator.rotate_vector(ct_x, step, gk, out)

    seconds: dict[str, float] = {}
    precision: dict[str, float] = {}
    # Each op runs once untimed (warm-up; its output gives the precision), then `repeats` times.
    ops: list[tuple[str, Callable[[], object], np.ndarray | None]] = [
        ("encode", lambda: encoder.encode(x_list, top, scale, out_pt), None),
        ("decode", lambda: encoder.decode_double(pt_x), None),
        ("encrypt", lambda: encryptor.encrypt(pt_x, out), x),
        ("decrypt", lambda: decryptor.decrypt(ct_x, out_pt), None),
        ("multiply_relin_rescale", mul_relin_rescale, x * y),
        ("multiply_plain", lambda: evaluator.multiply_plain(ct_x, pt_y_at_ct, out), x * y),
        ("rotate", lambda: evaluator.rotate_vector(ct_x, 1, gk, out), np.roll(x, -1)),
        ("rotate_hoisted_8", rotate_8, np.roll(x, -8)),
    ]
    for name, fn, expected in ops:
        fn()
        if expected is not None:
            bits = precision_bits(decrypt_decode(out), expected)
            if bits < 5:
                raise RuntimeError(f"SEAL {name} gave a wrong result ({bits:.1f} bits)")
            if name != "rotate_hoisted_8":  # for this one only the last rotation is checked
                precision[name] = bits
        seconds[name] = median_seconds(fn, repeats)

    return {
        "library": "SEAL (tenseal.sealapi)",
        "version": str(tenseal.__version__),
        "log_n": log_n,
        "levels": levels,
        "scale_bits": scale_bits,
        "threads": 1,
        "seconds": seconds,
        "precision_bits": precision,
    }


if __name__ == "__main__":
    print(json.dumps(seal_ckks_timings(13, 2), indent=2))
