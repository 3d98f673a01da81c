"""The demo's report: one JSON document, rendered as Markdown and PNG plots.

:func:`write_report` writes ``report.json`` (everything measured), ``report.md`` (the tables
a reader wants: accuracy of BlindFed against the plaintext baselines, time and traffic per
block, the federation's rounds) and two plots, ``accuracy_per_round.png`` and
``blocks.png``. :func:`plot_accuracy` and :func:`plot_blocks` draw them on any matplotlib
axes, so a notebook can redraw the plots from a saved ``report.json``::

    import json, matplotlib.pyplot as plt
    from blindfed.experiments.report import plot_accuracy
    report = json.load(open("demo-out/report.json"))
    plot_accuracy(report, plt.gca())

The document's keys (all written by :mod:`blindfed.experiments.demo`): ``mode`` ("execute" or
"simulate"), ``settings``, ``model`` (teacher and student accuracy, the block plan),
``owners`` (one entry each: samples, labels), ``online`` (``per_block``: seconds, bytes up and
down, samples and revealed count per block; totals), ``federation`` (``runtime``, ``rounds``:
one entry per round with ``accuracy``, ``lr``, ``survivors``, ``dropped``,
``bytes_per_owner``, ``seconds``), ``baselines`` (method -> ``accuracy``, ``label``,
``setting``), ``paper`` (the paper's own figures) and ``seconds``.

>>> table([["a", 1.0], ["b", 22.5]], ["name", "value"]).splitlines()[2]
'| a | 1.0 |'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "accuracy_rows",
    "plot_accuracy",
    "plot_blocks",
    "render_markdown",
    "table",
    "write_report",
]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def accuracy_rows(report: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """(method, setting, accuracy) for BlindFed and every baseline, best first (the report's
    main table)."""
    rows: list[tuple[str, str, float | None]] = []
    fed = report.get("federation") or {}
    if fed.get("rounds"):
        readout = (fed.get("settings") or {}).get("readout", "cls")
        rows.append(
            (
                f"BlindFed (adapters rank {report['settings']['rank']}, readout {readout}, "
                f"{len(fed['rounds'])} rounds, {len(report['owners'])} owners)",
                f"double-blind, federated, {report['mode']}",
                fed["rounds"][-1].get("accuracy"),
            )
        )
    for b in (report.get("baselines") or {}).values():
        rows.append((b["label"], b["setting"], b["accuracy"]))
    return sorted(rows, key=lambda r: -1.0 if r[2] is None else -r[2])


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (what ``report.md`` holds)."""
    mode = report["mode"]
    out = [f"# blindfed demo report ({mode} mode)", ""]
    if mode != "execute":
        out += [
            "**Simulate mode**: the provider ran the plaintext mirror of the encrypted block "
            "(the same polynomials on float64), not CKKS. Accuracy is representative; time "
            "and bytes are not those of encryption.",
            "",
        ]
    m = report.get("model") or {}
    if m:
        if "agreement" in m:  # a backbone without a classifier: how close the student is
            a = m["agreement"]
            measured = (
                f"its FHE-friendly student agrees with it on {a['samples']} held-out MNIST "
                f"images with a final class-token cosine of {a['final_class_token_cosine']:.3f}"
            )
        else:
            measured = (
                f"teacher {_pct(m['teacher_test_accuracy'])} on held-out MNIST, the provider's "
                f"FHE-friendly student {_pct(m['student_test_accuracy'])}"
            )
        out += [
            f"Foundation model: {m['name']}; {measured}. Each block runs encrypted at ring "
            f"2^{m['log_n']} with {m['levels']} levels (128-bit security), "
            f"{m['samples_per_group']} samples per ciphertext group.",
            "",
        ]
    out += ["## Accuracy on the owners' test digits", ""]
    rows = [[name, setting, _pct(acc)] for name, setting, acc in accuracy_rows(report)]
    out += [table(rows, ["method", "setting", "accuracy"]), ""]
    paper = report.get("paper")
    if paper:
        out += [
            f"For reference, the paper ({paper['source']}): "
            + ", ".join(f"{k.replace('_', ' ')} {v:.2f} %" for k, v in paper["figures"].items())
            + ".",
            "",
        ]
    owners = report.get("owners") or []
    if owners:
        out += ["## Owners", ""]
        out += [
            table(
                [[o["name"], o["train_samples"], o["test_samples"], o["labels"]] for o in owners],
                ["owner", "train", "test", "training labels (count per class)"],
            ),
            "",
        ]
    online = report.get("online") or {}
    if online.get("per_block"):
        out += [f"## Online phase ({mode})", ""]
        out += [
            table(
                [
                    [
                        b["block"],
                        b["samples"],
                        b["revealed_samples"],
                        f"{b['seconds']:.1f}",
                        f"{b['seconds'] / b['samples']:.3f}" if b["samples"] else "-",
                        f"{b['upload_bytes'] / 1e6:.2f}",
                        f"{b['download_bytes'] / 1e6:.2f}",
                    ]
                    for b in online["per_block"]
                ],
                ["block", "samples", "revealed", "s", "s / sample", "MB up", "MB down"],
            ),
            "",
            f"Total {online['seconds']:.1f} s, {online['upload_bytes'] / 1e6:.1f} MB up and "
            f"{online['download_bytes'] / 1e6:.1f} MB down (ciphertexts, keys not counted; "
            f"evaluation keys {online.get('key_bytes', 0) / 1e6:.1f} MB per owner, once).",
            "",
        ]
    fed = report.get("federation") or {}
    if fed.get("rounds"):
        rounds = fed["rounds"]
        out += [f"## Federation ({fed['runtime']})", ""]
        shown = rounds if len(rounds) <= 12 else rounds[:5] + rounds[-5:]
        out += [
            table(
                [
                    [
                        r["round"],
                        f"{r['lr']:g}",
                        f"{len(r['survivors'])}/{len(r['owners'])}",
                        _pct(r.get("accuracy")),
                        f"{max(r['bytes_per_owner'].values()) / 1e3:.0f}",
                        f"{r['seconds']:.1f}",
                    ]
                    for r in shown
                ],
                ["round", "lr", "owners in the sum", "accuracy", "kB per owner", "s"],
            ),
            "",
        ]
        if len(rounds) > len(shown):
            out += [f"({len(rounds) - len(shown)} middle rounds in report.json.)", ""]
        s = fed.get("settings") or {}
        if s:
            preset = f"preset {s['preset']}" if s.get("preset") else "the defaults"
            out += [
                f"Optimisation ({preset}, chosen on a validation split by `blindfed tune`): "
                f"SGD at client lr {s['lr']:g} (x{s['gamma']:g} from rounds "
                f"{s['milestones'] or 'never'}), {s['local-epochs']} local epochs; server "
                f"optimiser {s['server-optimizer']} at lr {s['server-lr']:g}; readout "
                f"{s.get('readout', 'cls')} (the head on the class token, `cls`, the mean of "
                "the patch tokens, `mean`, or both).",
                "",
            ]
    out += [f"Total wall time {report['seconds']:.0f} s.", ""]
    return "\n".join(out)


def plot_accuracy(report: dict[str, Any], ax: Any) -> Any:
    """Test accuracy per federated round, with the baselines as horizontal lines."""
    rounds = (report.get("federation") or {}).get("rounds") or []
    xs = [r["round"] for r in rounds if r.get("accuracy") is not None]
    ys = [r["accuracy"] for r in rounds if r.get("accuracy") is not None]
    ax.plot(xs, ys, marker="o", markersize=3, label=f"BlindFed ({report['mode']})")
    for i, b in enumerate((report.get("baselines") or {}).values()):
        ax.axhline(
            b["accuracy"], color=f"C{i + 1}", linestyle="--", linewidth=0.8, label=b["label"]
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy per federated round")
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_blocks(report: dict[str, Any], axes: Sequence[Any]) -> Sequence[Any]:
    """Seconds per sample and MB per sample (up and down) for each block."""
    blocks = (report.get("online") or {}).get("per_block") or []
    index = [b["block"] for b in blocks]
    per = [max(b["samples"], 1) for b in blocks]
    time_ax, bytes_ax = axes
    time_ax.bar(index, [b["seconds"] / n for b, n in zip(blocks, per, strict=True)])
    time_ax.set_xlabel("block")
    time_ax.set_ylabel("seconds per sample")
    time_ax.set_title(f"Provider time per block ({report['mode']})")
    width = 0.4
    up = [b["upload_bytes"] / n / 1e6 for b, n in zip(blocks, per, strict=True)]
    down = [b["download_bytes"] / n / 1e6 for b, n in zip(blocks, per, strict=True)]
    bytes_ax.bar([i - width / 2 for i in index], up, width, label="owner -> provider")
    bytes_ax.bar([i + width / 2 for i in index], down, width, label="provider -> owner")
    bytes_ax.set_xlabel("block")
    bytes_ax.set_ylabel("MB per sample")
    bytes_ax.set_title("Traffic per block")
    bytes_ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(index)
    return axes


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes ``report.json``, ``report.md`` and the PNG plots (if matplotlib is installed);
    returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    markdown = render_markdown(report)
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        markdown += "\n(Plots need matplotlib: pip install matplotlib.)\n"
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_accuracy(report, ax)
        fig.tight_layout()
        paths["accuracy_plot"] = out / "accuracy_per_round.png"
        fig.savefig(paths["accuracy_plot"], dpi=120)
        plt.close(fig)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        plot_blocks(report, axes)
        fig.tight_layout()
        paths["blocks_plot"] = out / "blocks.png"
        fig.savefig(paths["blocks_plot"], dpi=120)
        plt.close(fig)
        markdown += "\n![accuracy per round](accuracy_per_round.png)\n\n![blocks](blocks.png)\n"
    paths["markdown"].write_text(markdown)
    return paths
