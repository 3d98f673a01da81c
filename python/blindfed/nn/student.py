"""The FHE-friendly student: the teacher's ViT with every non-polynomial function approximated.

Each block gets its own approximations (one exp and one reciprocal for the softmax, one 1/sqrt
shared by its two LayerNorms, one GELU), whose ranges are calibrated on data
(:meth:`Student.calibrate`) and stored in the state dict. :meth:`Student.export_blocks` hands the
blocks to the encrypted evaluator with exactly those approximations.

>>> import torch
>>> from blindfed.nn.vit import ViT, ViTConfig
>>> from blindfed.nn.student import Student
>>> teacher = ViT(ViTConfig(width=32, depth=2, heads=2, mlp=64))
>>> student = Student.from_teacher(teacher)
>>> report = student.calibrate([torch.randn(8, 1, 28, 28)])
>>> sum(r["out_of_range"] for r in report.values())
0
>>> blocks = student.export_blocks()
>>> len(blocks), blocks[0].shape["tokens"]
(2, 17)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blindfed.approx import Approximation, from_spec, preset
from blindfed.block import Block as EncryptedBlock
from blindfed.nn.approx import PolyApprox, PolyGELU, PolyLayerNorm, PolySoftmax
from blindfed.nn.vit import Functions, ViT, ViTConfig

__all__ = ["Student"]

_FUNCTIONS = ("exp", "reciprocal", "inv_sqrt", "gelu")


def _student_functions(templates: dict[str, Approximation]) -> Functions:
    shared_inv_sqrt: dict[int, PolyApprox] = {}

    def inv_sqrt(block: int) -> PolyApprox:
        if block not in shared_inv_sqrt:
            shared_inv_sqrt[block] = PolyApprox(templates["inv_sqrt"])
        return shared_inv_sqrt[block]

    return Functions(
        norm=lambda block, width, eps: PolyLayerNorm(width, inv_sqrt(block), eps),
        softmax=lambda block: PolySoftmax(templates["exp"], templates["reciprocal"]),
        act=lambda block: PolyGELU(templates["gelu"]),
    )


def _check_not_diverging(
    name: str,
    seen: tuple[float, float] | None,
    exact: tuple[float, float] | None,
    modules: dict[str, PolyApprox],
) -> None:
    """Refuses to chase inputs that an inaccurate earlier approximation blew up.

    The student legitimately differs from the exact model (Quad is not GELU), so only inputs
    a hundred widths beyond the exact model's are taken for a blow-up.
    """
    if seen is None or exact is None:
        return
    width = max(exact[1] - exact[0], 1e-6 * max(abs(exact[0]), abs(exact[1]), 1.0))
    if seen[0] >= exact[0] - 100 * width and seen[1] <= exact[1] + 100 * width:
        return
    # Quad stands in for GELU without approximating it: not a suspect.
    suspects = {k: m for k, m in modules.items() if m.approximation.name != "gelu_quad"} or modules
    worst = max(suspects.items(), key=lambda kv: kv[1].approximation.max_error(501)[1])
    raise ValueError(
        f"calibration diverges: {name} sees inputs in [{seen[0]:.4g}, {seen[1]:.4g}] where the "
        f"exact model gives [{exact[0]:.4g}, {exact[1]:.4g}]; the least accurate approximation "
        f"is {worst[0]} ({worst[1].approximation!r}, relative error "
        f"{worst[1].approximation.max_error(501)[1]:.3g} on its range). Use a higher degree or "
        "more Newton steps, or calibrate on non-degenerate data (an untrained model's ~constant "
        "tokens give LayerNorm variances near 0)"
    )


class Student(ViT):
    """A ViT whose softmax, GELU and LayerNorms are the polynomial approximations.

    Args:
        config: the architecture (usually the teacher's).
        approximations: templates keyed ``exp``, ``reciprocal``, ``inv_sqrt``, ``gelu``: their
            kinds and degrees are used, their ranges replaced by calibration. A preset name
            (``"default"`` or ``"paper"``) or a dict; missing keys come from the default.
    """

    def __init__(
        self, config: ViTConfig, approximations: str | dict[str, Approximation] = "default"
    ) -> None:
        templates = dict(preset("default"))
        templates.update(
            preset(approximations) if isinstance(approximations, str) else approximations
        )
        unknown = set(templates) - {*_FUNCTIONS, "eps"}
        if unknown:
            raise ValueError(f"unknown approximation keys {sorted(unknown)}; expected {_FUNCTIONS}")
        for name in _FUNCTIONS:
            a = templates[name]
            if not isinstance(a, Approximation):
                raise TypeError(f"approximation {name!r} must be an Approximation, got {a!r}")
            if a.spec()["function"] != name:
                raise ValueError(f"approximation {name!r} approximates {a.spec()['function']}")
        super().__init__(config, _student_functions(templates))

    @classmethod
    def from_teacher(
        cls, teacher: ViT, approximations: str | dict[str, Approximation] = "default"
    ) -> Student:
        """A student with the teacher's architecture and a copy of its weights."""
        student = cls(teacher.config, approximations)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        # Only the approximations' range buffers are the student's own.
        missing = [k for k in missing if not k.endswith(".range")]
        if missing or unexpected:
            raise ValueError(f"teacher does not match: missing {missing}, unexpected {unexpected}")
        return student.to(next(teacher.parameters()).device)

    # ---- the approximations --------------------------------------------------------------

    def approximations(self) -> Iterator[tuple[str, PolyApprox]]:
        """(name, module) for every distinct approximation, blocks first, then the final norm."""
        seen: set[int] = set()
        for name, module in self.named_modules():
            if isinstance(module, PolyApprox) and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def set_exact(self, exact: bool) -> None:
        """Uses the exact functions instead of the approximations (calibration, comparisons)."""
        for _, m in self.approximations():
            m.exact = exact

    @torch.no_grad()
    def _observe(self, batches: Iterable[torch.Tensor]) -> dict[str, dict[str, Any]]:
        modules = dict(self.approximations())
        for m in modules.values():
            m.start_observing()
        try:
            for images in batches:
                self(images)
        finally:
            seen = {name: m.stop_observing() for name, m in modules.items()}
        return {
            name: {"observed": seen[name], "out_of_range": m.out_of_range}
            for name, m in modules.items()
        }

    def calibrate(
        self, batches: Iterable[torch.Tensor], *, margin: float = 0.2, rounds: int = 4
    ) -> dict[str, dict[str, Any]]:
        """Sets every approximation's range from what the data feeds it.

        A first pass with the exact functions gives each range, widened by ``margin`` of its
        width on both sides; then passes with the approximations widen any range an input
        still falls outside of (later layers see the approximated earlier ones), up to
        ``rounds`` times. ``batches`` must be re-iterable (a list or a DataLoader).

        Returns, per approximation, its range, the inputs it saw, how many fell outside the
        range in the last pass (0 everywhere unless ``rounds`` ran out) and its (absolute,
        relative) error against the exact function on the range: a 1/sqrt over a range wider
        than about 1:1000 is inaccurate, and that shows there.
        """
        was_training = self.training
        self.eval()
        modules = dict(self.approximations())
        try:
            self.set_exact(True)
            report = self._observe(batches)
            exact = {name: r["observed"] for name, r in report.items()}
            self.set_exact(False)
            for name, m in modules.items():
                self._fit(m, exact[name], margin, widen=False)
            for _ in range(rounds):
                report = self._observe(batches)
                if all(r["out_of_range"] == 0 for r in report.values()):
                    break
                for name, m in modules.items():
                    if report[name]["out_of_range"]:
                        _check_not_diverging(name, report[name]["observed"], exact[name], modules)
                        self._fit(m, report[name]["observed"], margin, widen=True)
        finally:
            self.set_exact(False)
            self.train(was_training)
        for name, m in modules.items():
            report[name]["range"] = tuple(m.range.tolist())
            report[name]["approximation"] = repr(m.approximation)
            report[name]["max_error"] = m.approximation.max_error(2001)
        return report

    @staticmethod
    def _fit(m: PolyApprox, seen: tuple[float, float] | None, margin: float, widen: bool) -> None:
        if seen is None:
            return
        lo, hi = seen
        if widen:
            old_lo, old_hi = m.range.tolist()
            lo, hi = min(lo, old_lo), max(hi, old_hi)
        width = max(hi - lo, 1e-6 * max(abs(lo), abs(hi), 1.0))
        lo, hi = lo - margin * width, hi + margin * width
        if m.function in ("reciprocal", "inv_sqrt"):
            # Positive functions: keep the range positive (the inputs are).
            lo = max(lo, seen[0] / (1.0 + margin), 1e-9)
        m.set_range(lo, hi)

    @torch.no_grad()
    def out_of_range(self, batches: Iterable[torch.Tensor]) -> dict[str, int]:
        """Inputs outside each approximation's range on these batches (the range detector)."""
        return {name: r["out_of_range"] for name, r in self._observe(batches).items()}

    # ---- export to the encrypted evaluator ---------------------------------------------------

    def block_weights(self, index: int) -> dict[str, np.ndarray]:
        """Block ``index``'s weights in the encrypted evaluator's names, as float64 arrays."""
        b = self.blocks[index]
        d = self.config.width

        def a(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float64).numpy().copy()

        qkv_w, qkv_b = b.attn.qkv.weight, b.attn.qkv.bias
        return {
            "ln1_gamma": a(b.norm1.weight),
            "ln1_beta": a(b.norm1.bias),
            "wq": a(qkv_w[:d]),
            "bq": a(qkv_b[:d]),
            "wk": a(qkv_w[d : 2 * d]),
            "bk": a(qkv_b[d : 2 * d]),
            "wv": a(qkv_w[2 * d :]),
            "bv": a(qkv_b[2 * d :]),
            "wo": a(b.attn.proj.weight),
            "bo": a(b.attn.proj.bias),
            "ln2_gamma": a(b.norm2.weight),
            "ln2_beta": a(b.norm2.bias),
            "w1": a(b.mlp.fc1.weight),
            "b1": a(b.mlp.fc1.bias),
            "w2": a(b.mlp.fc2.weight),
            "b2": a(b.mlp.fc2.bias),
        }

    def block_approximations(self, index: int) -> dict[str, Any]:
        """Block ``index``'s approximations, keyed as :class:`blindfed.block.Block` takes them."""
        b = self.blocks[index]
        return {
            "exp": b.attn.softmax.exp.approximation,
            "reciprocal": b.attn.softmax.reciprocal.approximation,
            "inv_sqrt": b.norm1.inv_sqrt.approximation,
            "gelu": b.mlp.act.gelu.approximation,
            "eps": float(b.norm1.eps),
        }

    def export_blocks(self) -> list[EncryptedBlock]:
        """Every block as a :class:`blindfed.block.Block` for the encrypted evaluator."""
        return [
            EncryptedBlock(
                self.block_weights(i),
                tokens=self.config.tokens,
                heads=self.config.heads,
                approx=self.block_approximations(i),
            )
            for i in range(self.config.depth)
        ]

    # ---- saving -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Config and approximation specs: with the state dict, everything to rebuild it."""
        return {
            "config": self.config.to_dict(),
            "approximations": {name: m.spec() for name, m in self.approximations()},
        }

    @classmethod
    def rebuild(cls, description: dict[str, Any], state: dict[str, torch.Tensor]) -> Student:
        """The student :meth:`describe` and ``state_dict`` describe."""
        try:
            config = ViTConfig.from_dict(description["config"])
            specs = description["approximations"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed student description: {e!r}") from e
        first = {m: None for m in _FUNCTIONS}
        for spec in specs.values():
            fn = spec.get("function")
            if fn in first and first[fn] is None:
                first[fn] = from_spec(spec)
        student = cls(config, {k: v for k, v in first.items() if v is not None})
        student.load_state_dict(state)
        for name, m in student.approximations():
            if name not in specs:
                raise ValueError(f"description lacks approximation {name!r}")
            m.set_approximation(from_spec(specs[name]))
        return student

    def save(self, path: str | Path) -> None:
        """Writes the student (weights, ranges and approximation specs) to one file."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"description": self.describe(), "state": self.state_dict()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Student:
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
        return cls.rebuild(blob["description"], blob["state"])
