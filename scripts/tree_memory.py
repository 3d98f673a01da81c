"""Runs a command and reports the peak memory of its whole process tree.

``/usr/bin/time -v`` reports the largest single process; a Flower simulation spreads over the
driver, Ray's services and its workers. This samples every process of the tree every
``--every`` seconds and prints, as JSON, the peaks of the summed proportional set sizes (shared
pages split between their users: the honest total), of the summed resident sets (shared pages
counted once per process) and of the command's own resident set, with the wall time.

    python scripts/tree_memory.py -- .venv/bin/blindfed demo --runtime flower

Needs psutil (installed with Flower's simulation extra).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    try:
        import psutil
    except ImportError:
        parser.error("psutil is needed: pip install psutil")
    started = time.monotonic()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak = {"pss": 0, "rss": 0, "command_rss": 0}
    while child.poll() is None:
        pss = rss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for process in tree:
            try:
                memory = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += memory.pss
            rss += memory.rss
        peak["pss"] = max(peak["pss"], pss)
        peak["rss"] = max(peak["rss"], rss)
        try:
            peak["command_rss"] = max(peak["command_rss"], root.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(args.every)
    code = child.wait()
    report = {
        "returncode": code,
        "wall_seconds": round(time.monotonic() - started, 1),
        **{f"peak_{k}_gb": round(v / 2**30, 2) for k, v in peak.items()},
    }
    print(json.dumps(report), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
