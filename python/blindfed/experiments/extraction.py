"""The model-extraction attack that privacy boosting guards against, as a measurement.

A curious owner runs its own images through the protocol, aligns every output it can, fits a
surrogate for each span of blocks between two aligned outputs (a fresh transformer layer per
block spanned: the architecture is public, the weights are what it is after), chains the
surrogates from its input embeddings (it holds the patch embedding) to the last block,
fine-tunes the chain end to end on its (input, last block) pairs, and is scored on held-out
images: the error of each span and whether the student's own head, applied
to the surrogate's last-block output, makes the student's prediction.

What the owner can align, and how this attack uses it:

- within one pass, its revealed outputs with each other (the relative permutations);
- with permutations off, also with its inputs; with permutations on, only by *matching*: within
  each label window it assigns the first revealed output to the input embeddings by nearest
  neighbour (the residual stream keeps a block's output close to its input);
- across passes of the same images (``passes > 1``), the always-revealed last block links the
  passes (*linking*), so their revealed blocks add up per image.

Runs on the plaintext mirror (``simulate``): the owner sees the same values in ``execute`` up to
the encryption error (about 1e-4 of the range), far below what the surrogates resolve. The
ground truth (which permutation was drawn) is read from an all-revealed reference run and used
only to score the matching.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from blindfed.protocol.owner import DataOwner
from blindfed.protocol.provider import Provider

__all__ = ["Scenario", "Surrogate", "SurrogateConfig", "extraction_study", "match_windows"]


@dataclass(frozen=True)
class Scenario:
    """One setting of the defences and of the attacker's effort."""

    name: str
    permute: bool
    sample_blocks: bool
    passes: int = 1


DEFAULT_SCENARIOS = (
    Scenario("no defence", permute=False, sample_blocks=False),
    Scenario("permutations only", permute=True, sample_blocks=False),
    Scenario("block sampling only", permute=False, sample_blocks=True),
    Scenario("both (the protocol)", permute=True, sample_blocks=True),
    Scenario("both, 4 passes of the same images", permute=True, sample_blocks=True, passes=4),
)


@dataclass
class SurrogateConfig:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


def match_windows(queries: np.ndarray, keys: np.ndarray, windows: list[int]) -> np.ndarray:
    """For each query row, the key row it is matched to: a minimum-distance assignment within
    each window of consecutive rows (the owner's label windows)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the extraction study needs scipy: pip install scipy") from e

    q = queries.reshape(len(queries), -1)
    k = keys.reshape(len(keys), -1)
    match = np.empty(len(q), dtype=np.int64)
    start = 0
    for w in windows:
        s = slice(start, start + w)
        cost = ((q[s, None, :] - k[None, s, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        match[start + rows] = start + cols
        start += w
    return match


def _observe(
    student: Any, scenario: Scenario, images: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[list[dict[str, Any]], float]:
    """The attacker's merged view per batch: per sample, aligned outputs keyed by block (-1 is
    its input embedding), and the fraction of samples truly tied to their inputs."""
    provider = Provider(
        student,
        mode="simulate",
        permute=scenario.permute,
        sample_blocks=scenario.sample_blocks,
        rng=random.Random(seed),
    )
    truth = Provider(student, mode="simulate", privacy=False)
    owner, oracle = DataOwner("attacker"), DataOwner("reference")
    provider.register(owner.hello(provider.offer()))
    truth.register(oracle.hello(truth.offer()))
    group = provider.samples_per_group
    views, tied = [], []
    for start in range(0, len(labels), group):
        x, y = images[start : start + group], labels[start : start + group]
        # The owner's canonical input order: its inputs sorted by label (as it sends them).
        embedded = owner.embed(x[np.argsort(y, kind="stable")])
        true = oracle.forward(truth.forward, x, y, batch_id="truth").outputs
        passes = [
            owner.forward(provider.forward, x, y, batch_id=f"p{p}", cache=False)
            for p in range(scenario.passes)
        ]
        windows = passes[0].windows
        # Link every pass to the first through the last block (always revealed).
        outputs, revealed = passes[0].outputs.copy(), passes[0].revealed.copy()
        for other in passes[1:]:
            link = match_windows(outputs[:, -1], other.outputs[:, -1], windows)
            for b in np.flatnonzero(other.revealed & ~revealed):
                outputs[:, b] = other.outputs[link, b]
            revealed |= other.revealed
        first = int(np.flatnonzero(revealed)[0])
        if scenario.permute:
            # canonical sample i is input tie[i]: nearest embedding to its first revealed output
            tie = match_windows(outputs[:, first], embedded, windows)
        else:
            tie = np.arange(len(y))
        true_tie = match_windows(outputs[:, first], true[:, first], windows)
        tied.append(tie == true_tie)
        aligned = {-1: embedded[tie]}
        aligned.update({int(b): outputs[:, b] for b in np.flatnonzero(revealed)})
        views.append(aligned)
    return views, float(np.concatenate(tied).mean())


class Surrogate(nn.Module):
    """``blocks`` standard pre-norm transformer layers on standardised tokens: the input's
    per-token mean and per-feature spread scale input and output alike, so the layers'
    residual path starts as the identity of the residual stream."""

    def __init__(self, config: Any, blocks: int, inputs: np.ndarray) -> None:
        super().__init__()
        x = torch.as_tensor(inputs, dtype=torch.float32)
        self.register_buffer("mean", x.mean(0))
        # Pooled over tokens: a token that never varies (the class token's embedding) must
        # not be blown up by its zero spread.
        self.register_buffer("std", (x - x.mean(0)).std((0, 1)) + 1e-6)
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            config.mlp,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.standardise(x)) * self.std + self.mean


def _fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: SurrogateConfig,
    standardise: Any,
) -> float:
    """Trains on 90 % of the pairs; returns the relative error on the other 10 %. The loss
    lives in the output's standardised space, where every feature counts alike."""
    gen = torch.Generator().manual_seed(config.seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    idx = torch.randperm(len(xt), generator=gen)
    held, fit = idx[: max(len(idx) // 10, 1)], idx[max(len(idx) // 10, 1) :]
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    steps = config.epochs * -(-len(fit) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps)
    model.train()
    for _ in range(config.epochs):
        for b in fit[torch.randperm(len(fit), generator=gen)].split(config.batch_size):
            loss = nn.functional.mse_loss(standardise(model(xt[b])), standardise(yt[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return _relative_error(model, x[held.numpy()], y[held.numpy()])


@torch.no_grad()
def _predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def _unexplained(pred: np.ndarray, y: np.ndarray) -> float:
    """Squared error over the variance of the target (0: exact; 1: no better than its mean)."""
    return float(((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def _relative_error(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return _unexplained(_predict(model, x), y)


def _chain(errors: dict[tuple[int, int], float], last: int) -> list[tuple[int, int]] | None:
    """The spans from the input (-1) to the last block with the least summed error."""
    best: dict[int, tuple[float, list[tuple[int, int]]]] = {-1: (0.0, [])}
    for b in range(last + 1):
        options = [
            (best[a][0] + e, [*best[a][1], (a, bb)])
            for (a, bb), e in errors.items()
            if bb == b and a in best
        ]
        if options:
            best[b] = min(options, key=lambda o: o[0])
    return best[last][1] if last in best else None


def extraction_study(
    student: Any,
    attack: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    *,
    scenarios: tuple[Scenario, ...] = DEFAULT_SCENARIOS,
    config: SurrogateConfig | None = None,
    min_pairs: int = 64,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Runs the attack in each scenario; one report per scenario.

    ``attack`` is the owner's (images, labels), ``held_out`` the images (and labels) it is
    scored on. Each report holds the fraction of samples the owner tied to their inputs, the
    pairs it could align per span, the held-out error of each span's surrogate, the chosen
    chain and, end to end (after fine-tuning the chain on its (input, last block) pairs;
    ``chain_only`` before), the surrogate's error on the last block and its agreement with the
    student's predictions (``None`` where no chain from the inputs exists).
    """
    config = config or SurrogateConfig()
    torch.manual_seed(seed)
    last = student.config.depth - 1
    reference = Provider(student, mode="simulate", privacy=False)
    owner = DataOwner("scorer")
    reference.register(owner.hello(reference.offer()))
    test_images, test_labels = held_out
    truth = owner.forward(reference.forward, test_images, batch_id="held-out").outputs
    test_input = owner.embed(test_images)
    with torch.no_grad():
        head = student.head_logits(torch.as_tensor(truth[:, -1], dtype=torch.float32)).argmax(1)

    def score(surrogate: nn.Module) -> dict[str, float | None]:
        x, y = _predict(surrogate, test_input), truth[:, -1]
        with torch.no_grad():
            pred = student.head_logits(torch.as_tensor(x, dtype=torch.float32)).argmax(1)
        return {
            "last_block_error": _unexplained(x, y),
            "agreement_with_student": float((pred == head).float().mean() * 100),
            "surrogate_accuracy": None
            if test_labels is None
            else float((pred.numpy() == np.asarray(test_labels)).mean() * 100),
        }

    reports = []
    for scenario in scenarios:
        views, tied = _observe(student, scenario, *attack, seed)
        pairs: dict[tuple[int, int], tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for view in views:
            keys = sorted(view)
            for a, b in itertools.pairwise(keys):
                xs, ys = pairs.setdefault((a, b), ([], []))
                xs.append(view[a])
                ys.append(view[b])
        models, errors, span_report = {}, {}, {}
        for (a, b), (xs, ys) in sorted(pairs.items()):
            x, y = np.concatenate(xs), np.concatenate(ys)
            entry: dict[str, Any] = {"pairs": len(x)}
            if len(x) >= min_pairs:
                model = Surrogate(student.config, b - a, x)
                errors[(a, b)] = _fit(model, x, y, config, model.standardise)
                models[(a, b)] = model
                source = test_input if a < 0 else truth[:, a]
                entry["held_out_error"] = _relative_error(model, source, truth[:, b])
            span_report[f"{'input' if a < 0 else a}->{b}"] = entry
        chain = _chain(errors, last)
        report: dict[str, Any] = {
            "scenario": scenario.name,
            "permute": scenario.permute,
            "sample_blocks": scenario.sample_blocks,
            "passes": scenario.passes,
            "tied_to_inputs": tied,
            "spans": span_report,
            "chain": None,
            "chain_only": None,
            "last_block_error": None,
            "agreement_with_student": None,
            "surrogate_accuracy": None,
        }
        if chain is not None:
            surrogate = nn.Sequential(*(models[span] for span in chain))
            report["chain"] = [f"{'input' if a < 0 else a}->{b}" for a, b in chain]
            report["chain_only"] = score(surrogate)
            # Then the whole chain end to end on every (input, last block) pair it holds: the
            # last block is always revealed, so these are the most plentiful pairs.
            ends = [(v[-1], v[last]) for v in views if last in v]
            if sum(len(a) for a, _ in ends) >= min_pairs:
                x = np.concatenate([a for a, _ in ends])
                y = np.concatenate([b for _, b in ends])
                _fit(surrogate, x, y, config, models[chain[-1]].standardise)
            report.update(score(surrogate))
        reports.append(report)
    return reports
