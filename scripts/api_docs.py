"""Writes docs/api.md, the API reference, from the package's docstrings.

Every public module (listed below, in reading order) contributes its docstring, then each name
in its ``__all__`` with its signature and docstring. ``python scripts/api_docs.py --check``
exits 1 if docs/api.md is out of date (the tests run it).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = [
    "blindfed",
    "blindfed.ckks",
    "blindfed.secagg",
    "blindfed.errors",
    "blindfed.approx",
    "blindfed.block",
    "blindfed.nn.vit",
    "blindfed.nn.approx",
    "blindfed.nn.norm",
    "blindfed.nn.student",
    "blindfed.nn.calibration",
    "blindfed.nn.adapter",
    "blindfed.nn.lora",
    "blindfed.distill",
    "blindfed.losses",
    "blindfed.teacher",
    "blindfed.teacher.timm_vit",
    "blindfed.teacher.huggingface_vit",
    "blindfed.teacher.dinov2",
    "blindfed.teacher.onnx_dinov2",
    "blindfed.teacher.checkpoint",
    "blindfed.zoo",
    "blindfed.zoo.dinov2",
    "blindfed.zoo.foundations",
    "blindfed.data",
    "blindfed.atomic",
    "blindfed.protocol",
    "blindfed.protocol.provider",
    "blindfed.protocol.evaluation",
    "blindfed.protocol.cluster",
    "blindfed.protocol.owner",
    "blindfed.protocol.messages",
    "blindfed.protocol.block_sampling",
    "blindfed.protocol.permutation",
    "blindfed.fl",
    "blindfed.fl.fedavg",
    "blindfed.fl.server_opt",
    "blindfed.fl.secure_sum",
    "blindfed.fl.owner_data",
    "blindfed.fl.owner_node",
    "blindfed.fl.server",
    "blindfed.fl.transport",
    "blindfed.fl.settings",
    "blindfed.fl.run",
    "blindfed.fl.deploy",
    "blindfed.fl.deploy.certificates",
    "blindfed.fl.deploy.local_federation",
    "blindfed.experiments",
    "blindfed.experiments.foundation",
    "blindfed.experiments.recipes",
    "blindfed.experiments.demo",
    "blindfed.experiments.report",
    "blindfed.experiments.baselines",
    "blindfed.experiments.federated_baselines",
    "blindfed.experiments.tune",
    "blindfed.experiments.study",
    "blindfed.experiments.extraction",
    "blindfed.experiments.bench.ckks",
    "blindfed.experiments.bench.block",
    "blindfed.experiments.bench.e2e",
]

OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    # Defaults that are objects print with their address: keep the output reproducible.
    return re.sub(r"<(function|object) (\S+)(?: at 0x[0-9a-f]+)?>", r"<\2>", text)


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__) if getattr(obj, "__doc__", None) else ""


def _member(module: str, name: str, obj: object) -> list[str]:
    if inspect.ismodule(obj):
        return [f"- `{name}`: module [`{obj.__name__}`](#{obj.__name__.replace('.', '')})"]
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "value"
    head = f"#### `{module}.{name}{_signature(obj) if kind != 'value' else ''}`"
    lines = [head, ""]
    doc = _doc(obj) if kind != "value" else ""
    if doc:
        lines += [doc, ""]
    if inspect.isclass(obj):
        for attr, value in sorted(vars(obj).items()):
            if attr.startswith("_") or not (
                inspect.isfunction(value) or isinstance(value, property)
            ):
                continue
            target = value.fget if isinstance(value, property) else value
            sig = "" if isinstance(value, property) else _signature(value)
            first = _doc(target).split("\n\n")[0].replace("\n", " ")
            lines.append(f"- `{attr}{sig}`" + (f": {first}" if first else ""))
        lines.append("")
    return lines


def render() -> str:
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `python scripts/api_docs.py` (do not edit by hand).",
        "",
    ]
    for name in MODULES:
        module = importlib.import_module(name)
        out += [f"## `{name}`", "", _doc(module), ""]
        for member in getattr(module, "__all__", []):
            out += _member(name, member, getattr(module, member))
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
