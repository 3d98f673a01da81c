"""``blindfed demo``: the whole mission on the embedded default, end to end, with no network.

1. **The provider's model.** The zoo's MNIST ViT is the foundation model (the teacher); its
   FHE-friendly student is the one shipped with the package, or distilled again on MNIST with a
   short schedule (``distill_epochs``). Both are measured on held-out MNIST and one student
   block is planned for encryption. ``model="dinov2-small"`` runs a real pretrained model
   instead, DINOv2-S/14 at 112 px (:mod:`blindfed.experiments.foundation`), whose student the
   provider distils first (checkpointed; about an hour on 2 cores) and measures by its agreement
   with the teacher.
2. **The owners.** ``owners`` data owners hold a Dirichlet(``alpha``) label-skewed share of
   scikit-learn's digits (laid out as the model takes images) and an even share of its test
   split; each keeps its state in its own directory.
3. **The online phase** (double-blind): every owner's training and test images go through the
   student block by block, in ``execute`` mode on CKKS ciphertexts under the owner's own key
   (``simulate``: the plaintext mirror, and the report says so). Hidden blocks are joined by
   masked refreshes, revealed outputs are sanitised and permuted. The owners cache their
   outputs on their own disks; the provider serves them one after another, holding one
   owner's evaluation keys at a time.
4. **Federated rounds**: local training of adapters and head, SecAgg+ so the provider learns
   only the sum, weighted FedAvg, evaluation on the owners' test outputs every round.
5. **Baselines** on the same frozen teacher and data, in plaintext and not double-blind:
   centralised (:mod:`blindfed.experiments.baselines`) and federated over the same owners,
   rounds and secure aggregation (:mod:`blindfed.experiments.federated_baselines`: FedAvg of a
   linear probe and of LoRA), and the paper's figures for reference.
6. **The report** (:mod:`blindfed.experiments.report`): ``report.json``, ``report.md`` and PNG
   plots in ``out``.

Steps 3 and 4 are one federation run over Flower's simulation runtime (``runtime="flower"``:
the ServerApp in this process, each owner's ClientApp in a Ray worker, every protocol message
a Flower message) or over an in-process transport (``"local"``: the same server and owner
code). The deployment runtime, a SuperLink and SuperNodes as processes, runs the same apps:
:mod:`blindfed.fl.deploy`.

Nothing is lost if the demo is interrupted: owners cache their block outputs and the provider
checkpoints every round in ``out``, so running it again with the same ``out`` resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blindfed import __version__, num_threads, set_num_threads
from blindfed.fl.settings import DEFAULTS, MODEL_PRESETS, OWNERS
from blindfed.zoo.foundations import MODELS, check_model

__all__ = ["DemoConfig", "run_demo"]

log = logging.getLogger("blindfed.experiments.demo")


@dataclass
class DemoConfig:
    """The demo's settings (the ``blindfed demo`` options)."""

    out: str = "blindfed-demo"
    #: The foundation model (:data:`blindfed.zoo.foundations.MODELS`): the embedded MNIST ViT, or
    #: the opt-in DINOv2-S/14.
    model: str = MODELS[0]
    #: A saved student to use instead (a path; "": the zoo's, or distilled in ``out``).
    student: str = ""
    owners: int = OWNERS
    rounds: int = DEFAULTS["rounds"]
    mode: str = "execute"
    #: "flower" (Flower's simulation runtime), "local" (in process) or "auto" (Flower if
    #: installed).
    runtime: str = "auto"
    alpha: float = DEFAULTS["alpha"]
    #: caps on the whole federation's training and test samples (None: all of digits).
    train_samples: int | None = None
    test_samples: int | None = None
    rank: int = DEFAULTS["rank"]
    local_epochs: int = DEFAULTS["local-epochs"]
    #: 0: the student shipped with the package; n > 0: distil it again for n epochs.
    distill_epochs: int = 0
    baselines: bool = True
    baseline_epochs: int | None = None
    threads: int = 0
    seed: int = DEFAULTS["seed"]
    progress: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_model(self.model)
        if self.mode not in ("execute", "simulate"):
            raise ValueError(f"mode must be 'execute' or 'simulate', got {self.mode!r}")
        if self.runtime not in ("auto", "flower", "local"):
            raise ValueError(f"runtime must be 'auto', 'flower' or 'local', got {self.runtime!r}")
        if self.owners < 2:
            raise ValueError(f"secure aggregation needs at least 2 owners, got {self.owners}")
        for name in ("rounds", "rank", "local_epochs"):
            if getattr(self, name) < (0 if name == "rank" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("train_samples", "test_samples"):
            value = getattr(self, name)
            if value is not None and value < self.owners:
                raise ValueError(f"{name} must give every owner a sample, got {value}")
        from blindfed.fl.run import federation_config, merge_settings

        # Settings a run would refuse (unknown keys, presets, readouts) are refused now, not
        # after the online phase.
        federation_config(merge_settings({}, self.settings))


class _Bars:
    """tqdm bars when asked for and installed; plain lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.tqdm = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm
            except ImportError:
                pass

    def bar(self, total: int, desc: str, unit: str) -> Any:
        if self.tqdm is None:
            return _NoBar()
        return self.tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def say(self, line: str) -> None:
        if self.tqdm is not None:
            self.tqdm.write(line)
        else:
            print(line, flush=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class _BlockMeter:
    """Collects the provider's per-block events: time, traffic, samples (and a progress bar)."""

    def __init__(self, blocks: int, bar: Any) -> None:
        self.rows = [
            {
                "block": b,
                "seconds": 0.0,
                "samples": 0,
                "revealed_samples": 0,
                "upload_bytes": 0,
                "download_bytes": 0,
                "refreshes": 0,
            }
            for b in range(blocks)
        ]
        self.bar = bar

    def __call__(self, event: Any) -> None:
        row = self.rows[event.block]
        row["seconds"] += event.seconds
        row["samples"] += event.samples
        row["revealed_samples"] += event.samples if event.revealed else 0
        row["upload_bytes"] += event.upload_bytes
        row["download_bytes"] += event.download_bytes
        row["refreshes"] += event.refreshes
        self.bar.update(1)
        self.bar.set_postfix_str(f"{event.batch} block {event.block}: {event.seconds:.1f} s")

    def stage(self, batch: str, block: int, stage: str) -> None:
        """Progress within a block (the provider's ``on_stage``): the bar's label moves."""
        self.bar.set_postfix_str(f"{batch} block {block}: {stage}")


def _pick_runtime(runtime: str, say: Callable[[str], None]) -> str:
    if runtime == "local":
        return runtime
    try:
        import flwr  # noqa: F401
        import ray  # noqa: F401
    except ImportError as e:
        if runtime == "flower":
            raise RuntimeError(
                f"the Flower runtime needs flwr[simulation] ({e}): pip install 'blindfed[flower]'"
            ) from None
        say(f"Flower is not installed ({e}): federating over the in-process transport")
        return "local"
    return "flower"


def _owners(config: DemoConfig, work: Path) -> list[Any]:
    from blindfed.fl.owner_data import OwnerData

    shares = []
    for k in range(config.owners):
        data = OwnerData.digits_share(
            k,
            config.owners,
            alpha=config.alpha,
            seed=config.seed,
            train_samples=config.train_samples,
            test_samples=config.test_samples,
            model=config.model,
        )
        # Where the Flower ClientApp of partition k finds its data (blindfed.fl.app).
        data.save(work / f"owner-{k}" / "data.npz")
        shares.append(data)
    return shares


def _settings(config: DemoConfig, out: Path) -> dict[str, Any]:
    preset = MODEL_PRESETS[config.model]
    return {
        **({"preset": preset} if preset else {}),
        "rounds": config.rounds,
        "local-epochs": config.local_epochs,
        "rank": config.rank,
        "min-owners": config.owners,
        "mode": config.mode,
        "state-dir": str(out / "provider"),
        "work-dir": str(out / "owners"),
        "alpha": config.alpha,
        "seed": config.seed,
        **config.settings,
    }


def _federate(
    config: DemoConfig,
    out: Path,
    runtime: str,
    student: Any,
    on_block: _BlockMeter,
    on_round: Callable[[dict[str, Any]], None],
    log_line: Callable[[str], None],
    before_rounds: Callable[[], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The online phase and the rounds, one federation run over ``runtime``; returns the
    online-phase figures and the provider's results."""
    from blindfed.fl.run import run_local

    settings = _settings(config, out)

    def on_online(figures: dict[str, Any]) -> None:
        if figures["ready"] < config.owners:
            # Raised inside the provider's run: the run stops before its rounds.
            raise RuntimeError(
                f"only {figures['ready']} of {config.owners} owners finished the passes"
            )
        before_rounds()

    # The ServerApp runs in this process under both runtimes, so the hooks reach it.
    hooks = {
        "on_block": on_block,
        "on_stage": on_block.stage,
        "on_online": on_online,
        "on_round": on_round,
        "progress": log_line,
        "student": student,
    }
    if runtime == "local":
        results = run_local(settings, config.owners, hooks=hooks)
        return results["online"], results
    from flwr.simulation import run_simulation

    from blindfed.fl.app import make_apps

    server, client = make_apps(settings, hooks=hooks)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=config.owners,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": max(2, num_threads()), "num_gpus": 0},
        },
    )
    results = Path(settings["state-dir"], "results.json")
    if not results.exists():
        raise RuntimeError(
            "the Flower run ended without results (see its log above); run the demo again "
            f"with the same --out to resume, or --runtime local; {results} is missing"
        )
    provided = json.loads(results.read_text())
    return provided["online"], provided


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Runs the demo; returns the report (also written to ``config.out``)."""
    import torch

    from blindfed.experiments.report import write_report

    config = config or DemoConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    bars = _Bars(config.progress)
    say = bars.say
    started = time.perf_counter()
    say(
        f"blindfed {__version__} demo: {config.owners} owners, {config.rounds} rounds, "
        f"{config.mode} mode, {num_threads()} threads, output in {out}"
    )
    runtime = _pick_runtime(config.runtime, say)
    from blindfed.experiments.foundation import load_foundation

    foundation = load_foundation(
        config.model,
        out,
        student=config.student,
        distill_epochs=config.distill_epochs,
        progress=config.progress,
        say=say,
    )
    teacher, student, model = foundation.teacher, foundation.student, foundation.section
    say(
        f"provider: a block runs encrypted at ring 2^{model['log_n']}, {model['levels']} "
        f"levels, {model['samples_per_group']} samples per ciphertext group"
    )
    shares = _owners(config, out / "owners")
    group = model["samples_per_group"]
    owners = []
    for k, d in enumerate(shares):
        counts = np.bincount(d.train_labels, minlength=10).tolist()
        owners.append(
            {
                "name": f"owner-{k}",
                "train_samples": len(d.train_labels),
                "test_samples": len(d.test_labels),
                "labels": counts,
            }
        )
        say(
            f"owner-{k}: {len(d.train_labels)} training digits (per class {counts}), "
            f"{len(d.test_labels)} test digits"
        )
    # An owner's training and test images share ciphertext groups (blindfed.fl.owner_node).
    passes = sum(-(-(len(d.train_labels) + len(d.test_labels)) // group) for d in shares)
    blocks = student.config.depth
    if config.mode == "execute":
        say(
            f"online phase: {passes} ciphertext groups x {blocks} blocks on CKKS (a group "
            "costs the same whether full or not; on 2 cores a block of a group takes minutes)"
        )
    online_bar = bars.bar(passes * blocks, f"online phase ({config.mode})", "block")
    meter = _BlockMeter(blocks, online_bar)
    round_bar: Any = _NoBar()

    def before_rounds() -> None:
        nonlocal round_bar
        online_bar.close()
        round_bar = bars.bar(config.rounds, f"federation ({runtime})", "round")

    def on_round(entry: dict[str, Any]) -> None:
        round_bar.update(1)
        if entry.get("accuracy") is not None:
            round_bar.set_postfix_str(
                f"accuracy {entry['accuracy']:.1f} %, {len(entry['survivors'])} in the sum"
            )

    log_path = out / "demo.log"

    def log_line(line: str) -> None:
        with open(log_path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    t0 = time.perf_counter()
    online, results = _federate(
        config, out, runtime, student, meter, on_round, log_line, before_rounds
    )
    online_bar.close()
    round_bar.close()
    history = results["history"]
    report: dict[str, Any] = {
        "blindfed": __version__,
        "mode": config.mode,
        "settings": asdict(config),
        "threads": num_threads(),
        "model": model,
        "owners": owners,
        "online": {
            "mode": config.mode,
            "per_block": meter.rows,
            "seconds": sum(r["seconds"] for r in meter.rows),
            "upload_bytes": sum(r["upload_bytes"] for r in meter.rows),
            "download_bytes": sum(r["download_bytes"] for r in meter.rows),
            "key_bytes": online["key_bytes_per_owner"],
            "wall_seconds": online["seconds"],
            "groups": passes,
        },
        "federation": {
            "runtime": "Flower simulation runtime" if runtime == "flower" else "in process",
            "rounds": history,
            "seconds": time.perf_counter() - t0 - online["seconds"],
            "secure_aggregation": "SecAgg+ (the provider learns only the sum)",
            "settings": results.get("settings", {}),
        },
    }
    if config.baselines:
        from blindfed.experiments.baselines import PAPER_CIFAR10, BaselineConfig, run_baselines

        say("baselines: plaintext, centralised, the same frozen teacher and data")
        train_x = np.concatenate([d.train_images for d in shares])
        train_y = np.concatenate([d.train_labels for d in shares])
        test_x = np.concatenate([d.test_images for d in shares])
        test_y = np.concatenate([d.test_labels for d in shares])
        baseline_config = BaselineConfig(seed=config.seed)
        if config.baseline_epochs:
            baseline_config = BaselineConfig(epochs=config.baseline_epochs, seed=config.seed)
        report["baselines"] = run_baselines(
            train_x,
            train_y,
            test_x,
            test_y,
            teacher=teacher,
            student=student,
            methods=foundation.baselines,
            config=baseline_config,
            progress=say,
        )
        from blindfed.experiments.federated_baselines import (
            MODEL_LEARNING_RATES,
            FederatedBaselineConfig,
            run_federated,
        )
        from blindfed.fl.run import federation_config, merge_settings

        say("baselines: plaintext, federated (FedAvg, secure aggregation), the same owners")
        federated = FederatedBaselineConfig.from_federation(
            federation_config(merge_settings({}, _settings(config, out))),
            lr=MODEL_LEARNING_RATES.get(config.model, {}),
        )
        report["baselines"].update(
            run_federated(
                shares,
                teacher,
                methods=foundation.federated_baselines,
                config=federated,
                progress=say,
            )
        )
        report["paper"] = {
            "source": "Tastan & Nandakumar, ICCV 2025, CIFAR-10, ViT-B/16, centralised",
            "figures": PAPER_CIFAR10,
        }
    report["seconds"] = time.perf_counter() - started
    paths = write_report(report, out)
    report["files"] = {k: str(v) for k, v in paths.items()}
    return report


def summary(report: dict[str, Any]) -> str:
    """The short table printed at the end of the demo."""
    from blindfed.experiments.report import accuracy_rows

    rows = accuracy_rows(report)
    width = max([len("method"), *(len(name) for name, _, _ in rows)])
    lines = [f"{'method':{width}} {'setting':48} {'accuracy':>9}"]
    for name, setting, acc in rows:
        shown = "-" if acc is None else f"{acc:.1f} %"
        lines.append(f"{name:{width}} {setting:48} {shown:>9}")
    online = report["online"]
    samples = sum(o["train_samples"] + o["test_samples"] for o in report["owners"])
    lines.append("")
    lines.append(
        f"online phase ({report['mode']}): {samples} samples, {online['seconds']:.0f} s at the "
        f"provider, {online['upload_bytes'] / 1e6:.0f} MB up, "
        f"{online['download_bytes'] / 1e6:.0f} MB down"
    )
    lines.append(f"report: {report['files']['markdown']} (total {report['seconds']:.0f} s)")
    return "\n".join(lines)
