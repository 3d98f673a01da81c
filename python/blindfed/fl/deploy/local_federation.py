"""A SuperLink and one SuperNode per owner on loopback, as real processes (see docs/deploy.md)."""

from __future__ import annotations

import atexit
import contextlib
import json
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from blindfed.fl.deploy.certificates import Certificates, NodeKey, make_certificates, make_node_keys
from blindfed.fl.deploy.processes import (
    CONNECTION_NAME,
    FINISHED,
    NODE_READY,
    TAG_VAR,
    ConfigValue,
    Process,
    alive,
    executable,
    flower_env,
    free_port,
    json_from,
    run_command,
    signal_all,
    tagged,
    tail,
    write_toml_config,
)


class LocalFederation:
    """A SuperLink and ``owners`` SuperNodes on loopback, as real processes.

    Parameters
    ----------
    workdir
        Everything goes here: ``certs/`` (``ca.crt``, ``server.pem``, ...), ``keys/``
        (``owner-<i>.key``/``.pub``), ``flwr-home/`` (the CLI's ``config.toml``),
        ``superlink/``, ``owner-<i>/`` (each process's ``FLWR_HOME``, node config), ``logs/``.
    app_dir
        The Flower app (directory with ``pyproject.toml``) that :meth:`run` submits.
    owners
        Number of SuperNodes.
    node_configs
        ``node_configs[i]`` becomes SuperNode *i*'s ``--node-config`` (its ClientApps see it
        as ``context.node_config``).
    tls, node_auth
        TLS for every API, SuperNode authentication. Flower refuses node auth without TLS.
    env
        Extra environment variables for every process (SuperLink, SuperNodes, their
        ServerApp/ClientApp processes, the CLI).
    base_port
        SuperLink port; SuperNode *i*'s Runtime API gets ``base_port + 1 + i``. By default
        every port is picked free.
    startup_timeout
        Seconds to wait for the SuperLink to answer and each SuperNode to log in.
    stop_grace
        Seconds :meth:`stop` waits after SIGTERM before it SIGKILLs.

    Linux: strays (processes orphaned by a kill) are found through ``/proc``; elsewhere
    only process groups are killed.
    """

    def __init__(
        self,
        workdir: Path,
        app_dir: Path,
        owners: int,
        *,
        node_configs: Sequence[Mapping[str, ConfigValue]] | None = None,
        tls: bool = True,
        node_auth: bool = True,
        env: Mapping[str, str] | None = None,
        base_port: int | None = None,
        startup_timeout: float = 60.0,
        stop_grace: float = 3.0,
    ) -> None:
        if owners < 1:
            raise ValueError("a federation needs at least one owner")
        if node_configs is not None and len(node_configs) != owners:
            raise ValueError(f"{len(node_configs)} node_configs for {owners} owners")
        if node_auth and not tls:
            raise ValueError("Flower's SuperNode authentication requires TLS")
        self.workdir = Path(workdir).absolute()
        self.app_dir = Path(app_dir).absolute()
        self.owners = owners
        self.node_configs = [dict(c) for c in node_configs] if node_configs else None
        self.tls = tls
        self.node_auth = node_auth
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.logs = self.workdir / "logs"
        self.tag = f"{uuid.uuid4().hex}"
        if base_port is None:
            self.superlink_port = free_port()
            self.node_ports = [free_port() for _ in range(owners)]
        else:
            self.superlink_port = base_port
            self.node_ports = [base_port + 1 + i for i in range(owners)]
        self.address = f"127.0.0.1:{self.superlink_port}"
        self.certificates: Certificates | None = None
        self.node_keys: list[NodeKey] = []
        self.node_ids: list[int | None] = [None] * owners
        self._superlink: Process | None = None
        self._nodes: list[Process | None] = [None] * owners
        self._extras: list[Process] = []
        self._started = False

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- environment ---------------------------------------------------------------------

    def _env(self, flwr_home: Path) -> dict[str, str]:
        return flower_env(flwr_home, self.extra_env)

    @property
    def cli_home(self) -> Path:
        """``FLWR_HOME`` of the ``flwr`` CLI (its ``config.toml`` names this SuperLink)."""
        return self.workdir / "flwr-home"

    def flwr(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """Run ``flwr <args>`` against this federation's SuperLink; return its stdout.

        Output is appended to ``logs/flwr.log``; raises :class:`RuntimeError` on failure
        when ``check``.
        """
        env = {**self._env(self.cli_home), TAG_VAR: f"{self.tag}:cli", "COLUMNS": "200"}
        return run_command("flwr", args, env, self.logs / "flwr.log", timeout, check)

    # -- start / stop --------------------------------------------------------------------

    def start(self) -> None:
        """Create certificates/keys if missing, start the SuperLink, register the keys,
        start the SuperNodes and wait until every one has logged in."""
        if self._started:
            return
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.tls:
            certs_dir = self.workdir / "certs"
            if (certs_dir / "server.pem").exists():
                self.certificates = Certificates(
                    certs_dir / "ca.crt",
                    certs_dir / "ca.key",
                    certs_dir / "server.pem",
                    certs_dir / "server.key",
                )
            else:
                self.certificates = make_certificates(certs_dir)
        if self.node_auth:
            keys_dir = self.workdir / "keys"
            existing = [
                NodeKey(keys_dir / f"owner-{i}.key", keys_dir / f"owner-{i}.pub")
                for i in range(self.owners)
            ]
            if all(k.private_key.exists() and k.public_key.exists() for k in existing):
                self.node_keys = existing
            else:
                self.node_keys = make_node_keys(keys_dir, self.owners)
        self._write_cli_config()
        self._start_superlink()
        if self.node_auth:
            for i, key in enumerate(self.node_keys):
                out = self.flwr(
                    "supernode", "register", str(key.public_key), CONNECTION_NAME,
                    "--name", f"owner-{i}", "--format", "json",
                )  # fmt: skip
                self.node_ids[i] = int(json_from(out)["node-id"])
        for i in range(self.owners):
            self._start_node(i)
        for i in range(self.owners):
            self._wait_node(i, self.startup_timeout)

    def _write_cli_config(self) -> None:
        self.cli_home.mkdir(parents=True, exist_ok=True)
        conn = [f"address = {json.dumps(self.address)}"]
        if self.certificates is not None:
            conn.append(f"root-certificates = {json.dumps(str(self.certificates.ca_cert))}")
        else:
            conn.append("insecure = true")
        text = (
            f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
            f"[superlink.{CONNECTION_NAME}]\n" + "\n".join(conn) + "\n"
        )
        (self.cli_home / "config.toml").write_text(text, encoding="utf-8")

    def superlink_command(self) -> list[str]:
        """The ``flower-superlink`` command line."""
        cmd = [executable("flower-superlink")]
        if self.certificates is not None:
            cmd += [
                "--ssl-ca-certfile", str(self.certificates.ca_cert),
                "--ssl-certfile", str(self.certificates.server_cert),
                "--ssl-keyfile", str(self.certificates.server_key),
            ]  # fmt: skip
        else:
            cmd.append("--insecure")
        if self.node_auth:
            cmd.append("--enable-supernode-auth")
        cmd += [
            "--host", "127.0.0.1",
            "--port", str(self.superlink_port),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        return cmd

    def supernode_command(
        self, index: int, *, private_key: Path | None = None, port: int | None = None
    ) -> list[str]:
        """The ``flower-supernode`` command line of owner ``index`` (``private_key`` and
        ``port`` override the owner's key and Runtime API port)."""
        home = self.workdir / f"owner-{index}"
        home.mkdir(parents=True, exist_ok=True)
        cmd = [executable("flower-supernode"), "--superlink", self.address]
        if self.certificates is not None:
            cmd += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            cmd.append("--insecure")
        key = private_key or (self.node_keys[index].private_key if self.node_auth else None)
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        if self.node_configs is not None and self.node_configs[index]:
            path = write_toml_config(home / "node-config.toml", self.node_configs[index])
            cmd += ["--node-config", str(path)]
        port = self.node_ports[index] if port is None else port
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        if self.certificates is not None:  # the ClientApps' Runtime API too
            cmd += [
                "--ssl-certfile", str(self.certificates.server_cert),
                "--ssl-keyfile", str(self.certificates.server_key),
                "--ssl-ca-certfile", str(self.certificates.ca_cert),
            ]  # fmt: skip
        return cmd

    def _start_superlink(self) -> None:
        home = self.workdir / "superlink"
        self._superlink = Process(
            "superlink",
            self.superlink_command(),
            self._env(home),
            self.logs / "superlink.log",
            f"{self.tag}:superlink",
        )
        deadline = time.monotonic() + self.startup_timeout
        scheme = "https" if self.certificates is not None else "http"
        context = (
            ssl.create_default_context(cafile=str(self.certificates.ca_cert))
            if self.certificates is not None
            else None
        )
        while True:
            if not self._superlink.running():
                raise RuntimeError(
                    "flower-superlink exited during startup\n" + tail(self._superlink.log)
                )
            try:
                with urllib.request.urlopen(
                    f"{scheme}://{self.address}/health", timeout=2, context=context
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "flower-superlink did not answer in time\n" + tail(self._superlink.log)
                )
            time.sleep(0.2)

    def _start_node(self, index: int) -> None:
        home = self.workdir / f"owner-{index}"
        self._nodes[index] = Process(
            f"owner-{index}",
            self.supernode_command(index),
            self._env(home / "flwr-home"),
            self.logs / f"owner-{index}.log",
            f"{self.tag}:owner-{index}",
        )

    def _wait_node(self, index: int, timeout: float) -> None:
        node = self._nodes[index]
        assert node is not None
        deadline = time.monotonic() + timeout
        while NODE_READY not in node.log_since_start():
            if not node.running():
                raise RuntimeError(
                    f"SuperNode {index} exited during startup ({node.popen.returncode})\n"
                    + tail(node.log)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperNode {index} did not log in\n" + tail(node.log))
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the SuperNodes, then the SuperLink; SIGKILL whatever is left. Idempotent."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        nodes = [p for p in [*self._nodes, *self._extras] if p is not None]
        self._nodes = [None] * self.owners
        self._extras = []
        for group in (nodes, [self._superlink] if self._superlink is not None else []):
            for proc in group:  # SIGTERM everything at once, then SIGKILL what is left
                proc.terminate()
            deadline = time.monotonic() + self.stop_grace
            while any(p.running() for p in group) and time.monotonic() < deadline:
                time.sleep(0.1)
            for proc in group:
                proc.kill(grace=0)
        self._superlink = None
        signal_all(tagged(self.tag, prefix=True), signal.SIGKILL)

    def processes(self) -> list[int]:
        """Pids of the live processes this federation started, however deep (found through
        the ``BLINDFED_FEDERATION_TAG`` environment variable they all inherit)."""
        return [p for p in tagged(self.tag, prefix=True) if alive(p)]

    # -- owners ----------------------------------------------------------------------------

    def owner_running(self, index: int) -> bool:
        """Whether SuperNode ``index``'s process is alive."""
        node = self._nodes[index]
        return node is not None and node.running()

    def kill_owner(self, index: int) -> None:
        """SIGKILL SuperNode ``index``'s process group and all its descendants (its
        SuperExec and any ClientApp process), without letting it log out."""
        node = self._nodes[index]
        if node is not None:
            node.kill(grace=0)

    def restart_owner(self, index: int, *, timeout: float = 150.0) -> None:
        """(Re)start SuperNode ``index`` and wait until it has logged in again.

        A running SuperNode is first stopped gracefully (SIGTERM: it logs out, so it can log
        in again at once). After :meth:`kill_owner` (SIGKILL) the SuperLink keeps the node
        "online" until its heartbeat expires (up to 2 x 30 s) and refuses a new login
        meanwhile, so this retries until ``timeout``.
        """
        node = self._nodes[index]
        if node is not None:
            node.kill(grace=self.stop_grace)
        deadline = time.monotonic() + timeout
        while True:
            self._start_node(index)
            node = self._nodes[index]
            assert node is not None
            while NODE_READY not in node.log_since_start() and node.running():
                if time.monotonic() > deadline:
                    node.kill(grace=0)
                    raise RuntimeError(f"SuperNode {index} did not log in\n" + tail(node.log))
                time.sleep(0.2)
            if NODE_READY in node.log_since_start():
                return
            node.kill(grace=0)
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperNode {index} could not log in\n" + tail(node.log))
            time.sleep(3.0)

    def start_extra_node(
        self, name: str, *, private_key: Path | None = None, like: int = 0
    ) -> subprocess.Popen[bytes]:
        """Start one more SuperNode, configured like owner ``like`` but with ``private_key``
        (``None``: no key at all) and its own port; its log is ``logs/<name>.log``.

        For testing refusals: with node auth on, a key that was not registered makes it exit
        with code 305 ("Failed to activate SuperNode"); no key, 305 too ("All SuperNodes must
        be registered via the CLI"). It is stopped with the federation.
        """
        cmd = self.supernode_command(like, port=free_port())
        if "--auth-supernode-private-key" in cmd:
            at = cmd.index("--auth-supernode-private-key")
            del cmd[at : at + 2]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        proc = Process(
            name,
            cmd,
            self._env(self.workdir / name / "flwr-home"),
            self.logs / f"{name}.log",
            f"{self.tag}:{name}",
        )
        self._extras.append(proc)
        return proc.popen

    # -- runs ------------------------------------------------------------------------------

    def run_status(self, run_id: str) -> dict:
        """``flwr list --run-id`` as a dict (keys ``status``, ``status-details``, ...)."""
        out = self.flwr("list", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json")
        runs = json_from(out)["runs"]
        if not runs:
            raise RuntimeError(f"run {run_id} unknown to the SuperLink")
        return runs[0]

    def run(
        self,
        run_config: Mapping[str, ConfigValue] | None = None,
        *,
        timeout: float = 600,
        poll: float = 2.0,
    ) -> str:
        """Submit ``app_dir`` with ``flwr run`` and wait until the run finishes.

        ``run_config`` overrides keys of the app's ``[tool.flwr.app.config]`` (every key
        must exist there). The ServerApp's log streams into ``logs/run-<id>.log``. Returns
        the run id; raises :class:`RuntimeError` with the logs' tails if the run fails, is
        stopped, or does not finish within ``timeout`` seconds (it is then stopped).
        """
        if not self._started:
            raise RuntimeError("LocalFederation is not started")
        args = ["run", str(self.app_dir), CONNECTION_NAME, "--format", "json"]
        if run_config:
            runs_dir = self.workdir / "runs"
            runs_dir.mkdir(exist_ok=True)
            path = runs_dir / f"run-config-{time.time_ns()}.toml"
            args += ["--run-config", str(write_toml_config(path, run_config))]
        out = self.flwr(*args)
        payload = json_from(out)
        if not payload.get("success") or not payload.get("run-id"):
            raise RuntimeError(f"flwr run did not start a run: {out}")
        run_id = str(payload["run-id"])
        run_log = self.logs / f"run-{run_id}.log"
        streamer = Process(
            f"log-{run_id}",
            [executable("flwr"), "log", run_id, CONNECTION_NAME, "--stream"],
            {**self._env(self.cli_home), "COLUMNS": "200"},
            run_log,
            f"{self.tag}:log-{run_id}",
        )
        deadline = time.monotonic() + timeout
        status: dict = {}
        try:
            while True:
                time.sleep(poll)
                status = self.run_status(run_id)
                if status["status"].startswith(FINISHED):
                    break
                if time.monotonic() > deadline:
                    self.flwr("stop", run_id, CONNECTION_NAME, check=False)
                    raise RuntimeError(
                        f"run {run_id} did not finish within {timeout} s "
                        f"(status {status['status']})\n" + self._log_tails(run_log)
                    )
        finally:
            # let the stream flush the last lines, then stop it
            end = time.monotonic() + 5
            while streamer.running() and time.monotonic() < end:
                time.sleep(0.2)
            streamer.kill(grace=0)
        if status["status"] != f"{FINISHED}:completed":
            raise RuntimeError(
                f"run {run_id} ended {status['status']}: {status.get('status-details')}\n"
                + self._log_tails(run_log)
            )
        return run_id

    def _log_tails(self, *first: Path) -> str:
        paths = [*first, self.logs / "superlink.log"]
        paths += [self.logs / f"owner-{i}.log" for i in range(self.owners)]
        return "\n".join(tail(p) for p in paths)
