"""The FHE-friendly student: the teacher's ViT with its softmax, normalisations and GELU replaced
by the families of a :class:`blindfed.approx.StudentSpec`.

Each block gets its own modules (a softmax numerator and denominator, one 1/sqrt shared by its
two LayerNorms or two affine norms, one GELU), whose ranges, constants and statistics are
calibrated on data (:meth:`Student.calibrate`) and stored in the state dict; distillation then
learns the constants (a power's shift, constant denominators) with the weights.
:meth:`Student.export_blocks` hands the blocks to the encrypted evaluator with exactly those
families.

>>> import torch
>>> from blindfed.nn.vit import ViT, ViTConfig
>>> from blindfed.nn.student import Student
>>> teacher = ViT(ViTConfig(width=32, depth=2, heads=2, mlp=64))
>>> student = Student.from_teacher(teacher, "softmax=quad denominator=constant norm=affine")
>>> report = student.calibrate([torch.randn(8, 1, 28, 28)])
>>> sum(r["out_of_range"] for r in report.values())
0
>>> blocks = student.export_blocks()
>>> len(blocks), blocks[0].shape["tokens"], blocks[0].approximations["numerator"].kind
(2, 17, 'power:2')
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blindfed.approx import Approximation, StudentSpec, student_spec
from blindfed.block import Block as EncryptedBlock
from blindfed.nn.approx import PolyApprox, PolyGELU, PolySoftmax
from blindfed.nn.calibration import (
    check_not_diverging,
    check_representable,
    far,
    within_bound,
)
from blindfed.nn.norm import AffineNorm, PolyLayerNorm
from blindfed.nn.vit import Functions, ViT, ViTConfig
from blindfed.protocol.block_sampling import block_pattern, request_starts

__all__ = ["Student"]


def _student_functions(spec: StudentSpec, heads: int) -> Functions:
    shared_inv_sqrt: dict[int, PolyApprox] = {}

    def norm(block: int, width: int, eps: float) -> torch.nn.Module:
        if spec.inv_sqrt is None:
            return AffineNorm(width, eps)
        if block not in shared_inv_sqrt:
            shared_inv_sqrt[block] = PolyApprox(spec.inv_sqrt)
        return PolyLayerNorm(width, shared_inv_sqrt[block], eps)

    def softmax(block: int) -> PolySoftmax:
        if spec.reciprocal is None:
            return PolySoftmax(spec.numerator, heads=heads)
        return PolySoftmax(spec.numerator, spec.reciprocal)

    return Functions(norm=norm, softmax=softmax, act=lambda block: PolyGELU(spec.gelu))


def _block_of(name: str) -> str:
    """The block a module name belongs to (``blocks.3``), or ``""`` for the final norm."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else ""


class Student(ViT):
    """A ViT whose softmax, normalisations and GELU are the families of a :class:`StudentSpec`.

    Args:
        config: the architecture (usually the teacher's).
        spec: a :class:`StudentSpec`, its text over the default (e.g. ``"softmax=quad
            denominator=constant norm=affine"``) or a preset name (``"default"``,
            ``"reference"``, ``"paper"``); kinds and degrees are used, ranges and constants come
            from calibration and distillation.

    With ``spec.owner_norm`` the first block of each request (block 0 and every block after a
    revealed one) gets its input normalised exactly, as the owner does in the clear: set
    :attr:`owner_blocks` to the blocks that are, or leave it None to draw them per forward
    pass from the provider's block sampling (seeded by :attr:`pattern_rng`), as distillation
    must see both paths.

    :attr:`scale_bits` is the CKKS scale its encrypted blocks are planned at (None: the
    planner's default, :meth:`blindfed.block.Block.plan`): a student whose polynomials amplify
    the encryption noise more needs more bits (saved with it; :meth:`plans`).
    """

    def __init__(self, config: ViTConfig, spec: str | StudentSpec | None = None) -> None:
        self.spec = student_spec(spec)
        super().__init__(config, _student_functions(self.spec, config.heads))
        self.owner_blocks: set[int] | None = None
        self.pattern_rng = random.Random(0)
        self.scale_bits: int | None = None

    @classmethod
    def from_teacher(cls, teacher: ViT, spec: str | StudentSpec | None = None) -> Student:
        """A student with the teacher's architecture and a copy of its weights."""
        student = cls(teacher.config, spec)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        # Only the families' ranges, constants and statistics are the student's own.
        own = (".range", ".shift", ".log_denominator", ".mean", ".inv_std")
        missing = [k for k in missing if not k.endswith(own)]
        if missing or unexpected:
            raise ValueError(f"teacher does not match: missing {missing}, unexpected {unexpected}")
        return student.to(next(teacher.parameters()).device)

    # ---- the owner-normalised path -------------------------------------------------------

    def start_pass(self) -> None:
        """Draws (or applies) which blocks are owner-normalised for the next pass."""
        if not self.spec.owner_norm:
            return
        starts = self.owner_blocks
        if starts is None:
            starts = request_starts(block_pattern(self.config.depth, self.pattern_rng))
        for i, block in enumerate(self.blocks):
            block.norm1.owner_normalised = i in starts

    def features(self, images: torch.Tensor) -> Any:
        self.start_pass()
        return super().features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.start_pass()
        return super().forward(images)

    # ---- the families ------------------------------------------------------------------------

    def approximations(self) -> Iterator[tuple[str, PolyApprox]]:
        """(name, module) for every distinct approximation, blocks first, then the final norm."""
        seen: set[int] = set()
        for name, module in self.named_modules():
            if isinstance(module, PolyApprox) and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def _family_modules(self) -> Iterator[torch.nn.Module]:
        yield from (m for _, m in self.approximations())
        yield from (m for m in self.modules() if isinstance(m, (PolySoftmax, AffineNorm)))

    def set_exact(self, exact: bool) -> None:
        """Uses the exact functions instead of the families (calibration, comparisons)."""
        for m in self._family_modules():
            m.exact = exact

    def family_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The families' learned constants: powers' shifts, constant denominators, and the
        affine norms' weights and biases."""
        for m in self.modules():
            if isinstance(m, PolySoftmax):
                if m.log_denominator is not None:
                    yield m.log_denominator
                if hasattr(m.numerator, "shift"):
                    yield m.numerator.shift
            elif isinstance(m, AffineNorm):
                yield m.weight
                yield m.bias

    def _passes(self, batches: Iterable[torch.Tensor]) -> Iterator[None]:
        """Runs every batch through the student, with both paths of the owner-normalised
        blocks if the spec has them (only the first block, then every block normalised by its
        owner), so calibration covers whatever pattern a request draws."""
        starts: list[set[int] | None] = [None]
        if self.spec.owner_norm:
            starts = [{0}, set(range(self.config.depth))]
        kept = self.owner_blocks
        try:
            for images in batches:
                for s in starts:
                    self.owner_blocks = s if s is not None else kept
                    self(images)
                    yield
        finally:
            self.owner_blocks = kept

    @torch.no_grad()
    def _observe(self, batches: Iterable[torch.Tensor]) -> dict[str, dict[str, Any]]:
        modules = dict(self.approximations())
        for m in modules.values():
            m.start_observing()
        try:
            for _ in self._passes(batches):
                pass
        finally:
            seen = {name: m.stop_observing() for name, m in modules.items()}
        return {
            name: {"observed": seen[name], "out_of_range": m.out_of_range}
            for name, m in modules.items()
        }

    def _power_softmaxes(self) -> list[PolySoftmax]:
        """The softmaxes whose numerator is a power with a learned shift."""
        return [
            m
            for m in self.modules()
            if isinstance(m, PolySoftmax) and hasattr(m.numerator, "shift")
        ]

    @torch.no_grad()
    def _calibrate_constants(self, batches: Iterable[torch.Tensor]) -> None:
        """Initial learned constants: affine statistics from what the exact norms see, power
        shifts whose maps are nearest the exact softmax's, and constant denominators at the
        mean row sum of the numerators."""
        norms = [m for m in self.modules() if isinstance(m, AffineNorm)]
        softmaxes = [m for m in self.modules() if isinstance(m, PolySoftmax)]
        powers = self._power_softmaxes()
        self.set_exact(True)
        for m in norms:
            m.start_observing()
        for m in powers:
            m.start_sampling_scores()
        try:
            for _ in self._passes(batches):
                pass
        finally:
            for m in norms:
                m.stop_observing(calibrate=True)
            for m in powers:
                rows = m.stop_sampling_scores()
                if rows is not None:
                    m.fit_shift(rows)
        for m in softmaxes:
            m.start_observing_sums()
        try:
            for _ in self._passes(batches):
                pass
        finally:
            self.set_exact(False)
            for m in softmaxes:
                sums = m.stop_observing_sums()
                if m.log_denominator is not None and sums is not None:
                    m.log_denominator.copy_(sums.clamp_min(1e-6).log())

    def calibrate(
        self,
        batches: Iterable[torch.Tensor],
        *,
        margin: float = 0.2,
        rounds: int = 4,
        constants: bool = False,
        strict: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Sets every approximation's range from what the data feeds it.

        A first pass with the exact functions gives each range, widened by ``margin`` of its
        width on both sides; then passes with the approximations widen any range an input
        still falls outside of (later layers see the approximated earlier ones), up to
        ``rounds`` times. With ``constants``, the learned constants start from the data too
        (affine statistics, power shifts, constant denominators: what distillation starts
        from). ``batches`` must be re-iterable (a list or a DataLoader). ``strict`` refuses
        to chase inputs that blow up (an inaccurate approximation upstream); distillation
        starts non-strict, since a cheap family's student may be far off before training.

        Returns, per approximation, its range, the inputs it saw, how many fell outside the
        range in the last pass (0 everywhere: a strict calibration whose ranges still miss
        data after ``rounds`` raises, naming them) and its (absolute, relative) error against
        the exact function on the range: a 1/sqrt over a range wider than about 1:1000 is
        inaccurate, and that shows there.
        """
        was_training = self.training
        self.eval()
        modules = dict(self.approximations())
        try:
            self.set_exact(True)
            report = self._observe(batches)
            exact = {name: r["observed"] for name, r in report.items()}
            self.set_exact(False)
            if constants:
                self._calibrate_constants(batches)
            if constants and any(m.reciprocal is not None for m in self._power_softmaxes()):
                # A power's sums change with its shift: its 1/x is observed again.
                self.set_exact(True)
                again = self._observe(batches)
                self.set_exact(False)
                for name, m in modules.items():
                    if m.function == "reciprocal":
                        exact[name] = again[name]["observed"]
            for name, m in modules.items():
                self._fit(name, m, exact[name], margin, widen=False)
            # Downstream inputs are only trusted once everything upstream is in range: each
            # pass widens the out-of-range ranges of the first block that has any.
            for _ in range(rounds * (self.config.depth + 1)):
                report = self._observe(batches)
                outside = [name for name in modules if report[name]["out_of_range"]]
                if not outside:
                    break
                # A later module's blow-up may be an earlier one's doing: only the first one
                # out of range is held to the divergence check, the rest wait a pass.
                if strict:
                    check_not_diverging(
                        outside[0], report[outside[0]]["observed"], exact[outside[0]], modules
                    )
                block = _block_of(outside[0])
                for name in outside:
                    seen = report[name]["observed"]
                    if _block_of(name) != block or (name != outside[0] and far(seen, exact[name])):
                        break
                    if not strict:
                        # Not past the divergence bound: training clamps to the range.
                        seen = within_bound(seen, exact[name])
                    self._fit(name, modules[name], seen, margin, widen=True)
        finally:
            self.set_exact(False)
            self.train(was_training)
        outside = {n: r["observed"] for n, r in report.items() if r["out_of_range"]}
        if strict and outside:
            raise ValueError(
                "calibration did not settle: "
                + ", ".join(
                    f"{n}'s range {tuple(round(v, 4) for v in modules[n].range.tolist())} does "
                    f"not contain the data's {tuple(round(v, 4) for v in seen)}"
                    for n, seen in outside.items()
                )
                + f" after {rounds} rounds; give more rounds or a larger margin"
            )
        for name, m in modules.items():
            report[name]["range"] = tuple(m.range.tolist())
            report[name]["approximation"] = repr(m.approximation)
            report[name]["max_error"] = m.approximation.max_error(2001)
        return report

    @staticmethod
    def _fit(
        name: str, m: PolyApprox, seen: tuple[float, float] | None, margin: float, widen: bool
    ) -> None:
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
        check_representable(name, (lo, hi))
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
        """Block ``index``'s families, keyed as :class:`blindfed.block.Block` takes them."""
        b = self.blocks[index]
        softmax = b.attn.softmax
        if softmax.reciprocal is not None:
            denominator: Any = softmax.reciprocal.approximation
        else:
            denominator = softmax.constants.tolist()
        if isinstance(b.norm1, AffineNorm):
            norm: Any = {"norm1": b.norm1.stats(), "norm2": b.norm2.stats()}
        else:
            norm = b.norm1.inv_sqrt.approximation
        return {
            "numerator": softmax.numerator.approximation,
            "denominator": denominator,
            "norm": norm,
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
                spec=self.spec,
            )
            for i in range(self.config.depth)
        ]

    def plans(self, blocks: list[EncryptedBlock] | None = None) -> list[dict[str, Any]]:
        """Each exported block's plan (its smallest secure parameters and predicted cost) at
        :attr:`scale_bits`; ``blocks`` if already exported."""
        options = {} if self.scale_bits is None else {"scale_bits": self.scale_bits}
        return [b.plan(**options) for b in blocks or self.export_blocks()]

    # ---- saving -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Config, spec and every approximation's text: with the state dict (which holds the
        learned constants and statistics), everything to rebuild it."""
        return {
            "config": self.config.to_dict(),
            "spec": self.spec.text,
            "approximations": {name: m.approximation.text for name, m in self.approximations()},
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def rebuild(cls, description: dict[str, Any], state: dict[str, torch.Tensor]) -> Student:
        """The student :meth:`describe` and ``state_dict`` describe."""
        try:
            config = ViTConfig.from_dict(description["config"])
            spec = StudentSpec(description["spec"])
            texts = description["approximations"]
            scale_bits = description.get("scale_bits")  # students saved before it: None
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed student description: {e!r}") from e
        # Its range is the parameters' to check (planning refuses an impossible scale).
        if scale_bits is not None and type(scale_bits) is not int:
            raise ValueError(
                f"malformed student description: scale_bits must be an integer or None, "
                f"got {scale_bits!r}"
            )
        student = cls(config, spec)
        student.scale_bits = scale_bits
        student.load_state_dict(state)
        for name, m in student.approximations():
            if not isinstance(texts.get(name), str):
                raise ValueError(f"description lacks approximation {name!r}")
            m.set_approximation(Approximation.from_text(texts[name]))
        # The state dict's learned shifts win over the texts' (they are the same when saved).
        student.load_state_dict(state)
        return student

    def save(self, path: str | Path) -> None:
        """Writes the student (weights, ranges, constants and families) to one file."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"description": self.describe(), "state": self.state_dict()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Student:
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
        return cls.rebuild(blob["description"], blob["state"])
