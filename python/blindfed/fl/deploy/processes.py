"""The processes of a deployment on one machine: started, found again by tag, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

ConfigValue = str | int | float | bool


CONNECTION_NAME = "blindfed"
"""Name of the SuperLink connection written to the ``flwr`` CLI's ``config.toml``."""

TAG_VAR = "BLINDFED_FEDERATION_TAG"
NODE_READY = "SuperNode ID:"
FINISHED = "finished"


def _proc_table() -> dict[int, int]:
    """pid -> ppid for every process visible in /proc (empty where there is no /proc)."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
                table[int(entry.name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return table


def _descendants(pid: int) -> list[int]:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def tagged(tag: str, *, prefix: bool = False) -> list[int]:
    """Pids whose environment has ``BLINDFED_FEDERATION_TAG=tag`` (or starting with it)."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for pid in _proc_table():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(needle) if prefix else v == needle for v in env):
            found.append(pid)
    return found


def signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Process:
    """A started process (in its own session), its log, and its environment tag."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, tag: str):
        self.name, self.cmd, self.log, self.tag = name, cmd, log, tag
        self.log_offset = log.stat().st_size if log.exists() else 0
        self._log_file: IO[bytes] = log.open("ab")
        self._log_file.write(f"\n==== {time.ctime()} $ {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self.popen = subprocess.Popen(
            cmd,
            env={**env, TAG_VAR: tag},
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_since_start(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def terminate(self) -> None:
        """SIGTERM the process group (Flower's processes then log out and exit)."""
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def kill(self, *, grace: float) -> None:
        """SIGTERM (if ``grace`` > 0), then SIGKILL the process group and every process
        descended from it or carrying its tag (orphans included); wait until they are gone."""
        pid = self.popen.pid
        if grace > 0:
            self.terminate()
            deadline = time.monotonic() + grace
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.1)
        victims = set(_descendants(pid)) | set(tagged(self.tag))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        signal_all(sorted(victims), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._log_file.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def _toml_value(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"config values must be str, int, float or bool, not {type(value)}")


def write_toml_config(path: Path, config: Mapping[str, ConfigValue]) -> Path:
    lines = [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in config.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"---- {path.name} (last {min(lines, len(text))} lines) ----\n" + "\n".join(
        text[-lines:]
    )


def json_from(output: str) -> dict:
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"no JSON in output: {output!r}")
    return json.loads(output[start : end + 1])


def flower_env(flwr_home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a Flower process: this interpreter's scripts first on ``PATH``,
    its own ``FLWR_HOME`` (created), no telemetry or update checks, unbuffered output, then
    ``extra``."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    flwr_home.mkdir(parents=True, exist_ok=True)
    return env


def run_command(
    name: str, args: Sequence[str], env: dict[str, str], log: Path, timeout: float, check: bool
) -> str:
    """Runs ``name <args>`` to completion; appends its output to ``log`` and returns its
    stdout; raises :class:`RuntimeError` on a timeout, or on failure when ``check``."""
    cmd = [executable(name), *args]
    shown = f"{name} {' '.join(args)}"
    try:
        result = subprocess.run(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{shown} timed out after {timeout} s") from err
    with log.open("a") as f:
        f.write(f"\n==== {time.ctime()} $ {shown} -> {result.returncode}\n")
        f.write(result.stdout)
        f.write(result.stderr)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{shown} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout
