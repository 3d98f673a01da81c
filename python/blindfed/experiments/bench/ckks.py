"""``blindfed bench ckks``: our CKKS engine against Microsoft SEAL, in one run, same parameters.

For each parameter set (N = 2^14 with 7 levels, N = 2^15 with 18 levels, N = 2^16 with 18
levels by default; 40-bit scale, 60-bit first and special primes) it times encode, decode,
encrypt, decrypt, multiply + relinearise + rescale, ct x pt multiply, one rotation and 8
rotations of one ciphertext (hoisted in our engine; SEAL has no hoisting), on our engine at
1 thread and at all threads and on SEAL (single-threaded), and reports the ratios ours / SEAL
and the precision in bits of each side. SEAL refuses N = 2^16 at 128-bit security; that set
is reported for our engine alone.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from blindfed import _core, ckks
from blindfed.experiments.bench.seal_baseline import seal_available, seal_ckks_timings
from blindfed.experiments.bench.timing import median_seconds, precision_bits

DEFAULT_SETS = ((14, 7), (15, 18), (16, 18))
OPS = (
    "encode",
    "decode",
    "encrypt",
    "decrypt",
    "multiply_relin_rescale",
    "multiply_plain",
    "rotate",
    "rotate_hoisted_8",
)


def ours_ckks_timings(
    log_n: int, levels: int, scale_bits: int = 40, *, threads: int, repeats: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Time our engine's operations; same inputs and method as the SEAL baseline."""
    previous = _core.num_threads()
    _core.set_num_threads(threads)
    try:
        params = ckks.Parameters(log_n, levels, scale_bits)
        sk = ckks.SecretKey.generate(params)
        keys = sk.evaluation_keys(rotations=list(range(1, 9)))
        pk = keys.public_key
        rng = np.random.default_rng(seed)
        n = params.ring_degree
        x = rng.uniform(-1.0, 1.0, n // 2)
        y = rng.uniform(-1.0, 1.0, n // 2)
        pt_x = ckks.Plaintext.encode(params, x)
        pt_y = ckks.Plaintext.encode(params, y)
        ct_x = pk.encrypt(pt_x).with_keys(keys)
        ct_y = pk.encrypt(pt_y).with_keys(keys)
        steps = list(range(1, 9))
        ops: list[tuple[str, Any, np.ndarray | None]] = [
            ("encode", lambda: ckks.Plaintext.encode(params, x), None),
            ("decode", lambda: pt_x.decode(), None),
            ("encrypt", lambda: pk.encrypt(pt_x), x),
            ("decrypt", lambda: sk.decrypt_plaintext(ct_x), None),
            ("multiply_relin_rescale", lambda: ct_x * ct_y, x * y),
            ("multiply_plain", lambda: ct_x.multiply(pt_y, rescale=False), x * y),
            ("rotate", lambda: ct_x.rotate(1), np.roll(x, -1)),
            ("rotate_hoisted_8", lambda: ct_x.rotate_many(steps), None),
        ]
        seconds: dict[str, float] = {}
        precision: dict[str, float] = {}
        for name, fn, expected in ops:
            out = fn()
            if expected is not None:
                precision[name] = precision_bits(sk.decrypt(out), expected)
            if name == "rotate_hoisted_8":
                for k, ct in zip(steps, out, strict=True):
                    bits = precision_bits(sk.decrypt(ct), np.roll(x, -k))
                    if bits < 5:
                        raise RuntimeError(f"hoisted rotation by {k} is wrong ({bits:.1f} bits)")
            seconds[name] = median_seconds(fn, repeats)
        return {
            "library": f"blindfed {_core.__version__}",
            "log_n": log_n,
            "levels": levels,
            "scale_bits": scale_bits,
            "threads": _core.num_threads(),
            "dnum": params.dnum,
            "log_qp": params.log_qp,
            "seconds": seconds,
            "precision_bits": precision,
        }
    finally:
        _core.set_num_threads(previous)


def run(
    sets: tuple[tuple[int, int], ...] = DEFAULT_SETS, *, repeats: int = 5, progress: Any = print
) -> dict[str, Any]:
    """Run the comparison; returns a JSON-ready report."""
    all_threads = os.cpu_count() or 1
    report: dict[str, Any] = {"benchmark": "ckks", "cpu_count": all_threads, "sets": []}
    for log_n, levels in sets:
        progress(f"N=2^{log_n}, {levels} levels: blindfed at 1 thread ...")
        one = ours_ckks_timings(log_n, levels, threads=1, repeats=repeats)
        progress(f"N=2^{log_n}, {levels} levels: blindfed at {all_threads} threads ...")
        many = ours_ckks_timings(log_n, levels, threads=0, repeats=repeats)
        entry: dict[str, Any] = {"log_n": log_n, "levels": levels, "ours_1": one, "ours_all": many}
        if seal_available():
            progress(f"N=2^{log_n}, {levels} levels: SEAL ...")
            try:
                seal = seal_ckks_timings(log_n, levels, repeats=repeats)
            except ValueError as err:
                entry["seal_error"] = str(err)
            else:
                entry["seal"] = seal
                entry["ratio_1"] = {op: one["seconds"][op] / seal["seconds"][op] for op in OPS}
                entry["ratio_all"] = {op: many["seconds"][op] / seal["seconds"][op] for op in OPS}
        else:
            entry["seal_error"] = "tenseal is not installed (pip install 'blindfed[bench]')"
        report["sets"].append(entry)
    return report


def _cell(value: float | None, width: int, spec: str) -> str:
    return f"{value:{width}{spec}}" if value is not None else "-".rjust(width)


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: times in ms, ratios ours / SEAL, precision in bits."""
    lines = []
    for entry in report["sets"]:
        one, many = entry["ours_1"], entry["ours_all"]
        seal = entry.get("seal")
        lines.append(
            f"\nN=2^{entry['log_n']}, {entry['levels']} levels, 40-bit scale "
            f"(dnum={one['dnum']}, log QP={one['log_qp']:.0f})"
        )
        if seal is None:
            lines.append(f"  SEAL: {entry.get('seal_error', 'not run')}")
        many_label = f"ours {many['threads']}T ms"
        header = (
            f"  {'op':<24}{'ours 1T ms':>11}{many_label:>12}"
            f"{'SEAL ms':>10}{'1T/SEAL':>9}{'nT/SEAL':>9}{'bits ours':>10}{'bits SEAL':>10}"
        )
        lines.append(header)
        for op in OPS:
            seal_ms = _cell(seal["seconds"][op] * 1e3 if seal else None, 10, ".2f")
            ratio_1 = _cell(entry["ratio_1"][op] if seal else None, 9, ".2f")
            ratio_n = _cell(entry["ratio_all"][op] if seal else None, 9, ".2f")
            bits_ours = _cell(one["precision_bits"].get(op), 10, ".1f")
            bits_seal = _cell(seal["precision_bits"].get(op) if seal else None, 10, ".1f")
            lines.append(
                f"  {op:<24}{one['seconds'][op] * 1e3:11.2f}{many['seconds'][op] * 1e3:12.2f}"
                f"{seal_ms}{ratio_1}{ratio_n}{bits_ours}{bits_seal}"
            )
    return "\n".join(lines)
