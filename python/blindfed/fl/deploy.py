"""Run a Flower app in Flower's deployment runtime: one SuperLink, one SuperNode per owner.

Flower (``flwr`` 1.42, the Message API) has two runtimes. The *simulation* runtime runs every
node inside one process tree (Ray, or threads). The *deployment* runtime is what a real
federation uses: a long-running **SuperLink** at the model provider and a long-running
**SuperNode** at every data owner, talking over the network. This module starts that runtime
on one machine, as real processes on loopback, with the same security settings a real
deployment should use:

* **TLS on**: :func:`make_certificates` writes a self-signed CA and a server certificate
  (with SANs for ``127.0.0.1`` and ``localhost`` by default) for the SuperLink.
* **SuperNode authentication on**: :func:`make_node_keys` writes one ECDSA P-384 key pair per
  owner in OpenSSH format; the public keys are registered with the SuperLink
  (``flwr supernode register``) before the SuperNodes start, and the SuperLink is started with
  ``--enable-supernode-auth``, so a SuperNode whose key was not registered is refused.

:class:`LocalFederation` is a context manager that starts and stops everything, submits a
run with ``flwr run`` and waits for it, and can SIGKILL / restart single SuperNodes to test
dropouts::

    from blindfed.fl.deploy import LocalFederation

    node_configs = [{"owner-dir": f"/data/owner{i}", "partition-id": i} for i in range(3)]
    with LocalFederation(Path("/tmp/fed"), app_dir, owners=3, node_configs=node_configs) as fed:
        run_id = fed.run({"num-rounds": 2})
        print(fed.logs)             # superlink.log, owner-0.log, ..., run-<id>.log, flwr.log

Processes and what they are
---------------------------
``flower-superlink`` serves the Fleet API (SuperNodes), the Control API (``flwr`` CLI) and
the Runtime API (ServerApp) over HTTPS on **one port** (``--host``/``--port``, default
``127.0.0.1:8000``). It spawns a ``flower-superexec`` (in its own session, so it is *not* in
the SuperLink's process group) which spawns one ``flwr-serverapp`` process per run.
``flower-supernode`` connects to the SuperLink's port, serves its own Runtime API for its
ClientApps on ``--host``/``--port`` (default ``127.0.0.1:9094``; every SuperNode on one
machine needs its own port), and spawns a ``flower-superexec`` that starts a **fresh
``flwr-clientapp`` process for every message** it receives. Ray is not used.

The ClientApp's ``context.state`` survives between messages of one run (the SuperNode keeps
the context in memory and hands it to each new ClientApp process), but not a SuperNode
restart; anything that must survive that belongs on disk (e.g. under
``context.node_config["owner-dir"]``).

The SuperLink is started with ``--disable-runtime-dependency-installation``: the ServerApp
and ClientApp run in the Python environment of the SuperLink / SuperNode (which must have
``blindfed`` installed) instead of a ``uv sync``-built environment per run.

The app directory
-----------------
``app_dir`` is a Flower app: a ``pyproject.toml`` with ``[tool.flwr.app]`` (``publisher``,
``[tool.flwr.app.components]`` ``serverapp``/``clientapp``, ``[tool.flwr.app.config]`` with
every run-config key a run may override) plus any ``*.py`` files. ``flwr run`` zips it into a
FAB (at most 10 MB) and ships it to the SuperLink, which ships it to the SuperNodes. The
components may name a module of an installed package (``blindfed.fl.app:server_app``):
Flower imports them with ``importlib`` after putting the unpacked FAB first on ``sys.path``,
so the app directory can hold just the ``pyproject.toml``. (``flwr run`` checks, statically,
that the module has a top-level *plain* assignment ``server_app = ...``; an annotated
assignment ``server_app: ServerApp = ...`` is rejected.)

Several machines
----------------
The same processes run on separate machines; only addresses and files change.
``<provider>`` is the provider's host name or IP as the owners reach it.

Files (from :func:`make_certificates` and :func:`make_node_keys`, or any PKI):

* Provider machine: ``ca.crt``, ``server.pem``, ``server.key`` (the server certificate's SANs
  must include ``<provider>`` *and* ``127.0.0.1``: the SuperLink's own ServerApp processes
  connect to it on loopback), and the owners' **public** keys ``owner-<i>.pub``.
  ``make_certificates(dir, hosts=("<provider>", "127.0.0.1", "localhost"))``.
* Owner ``i``'s machine: ``ca.crt`` (public) and its own **private** key ``owner-<i>.key``
  (mode 0600). Best: each owner creates its key pair itself
  (``make_node_keys`` or ``ssh-keygen -t ecdsa -b 384 -N "" -f owner-<i>.key``) and sends
  only ``owner-<i>.key.pub`` to the provider. The private key never leaves the owner.
* The machine that submits runs (normally the provider's): ``ca.crt`` and the app directory.

On the provider's machine::

    flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem \\
        --ssl-keyfile server.key --enable-supernode-auth \\
        --host 0.0.0.0 --port 9093 --disable-runtime-dependency-installation

    # ~/.flwr/config.toml (or $FLWR_HOME/config.toml) for the flwr CLI:
    #   [superlink]
    #   default = "blindfed"
    #   [superlink.blindfed]
    #   address = "<provider>:9093"
    #   root-certificates = "/abs/path/ca.crt"

    flwr supernode register owner-0.pub blindfed      # once per owner
    flwr supernode list blindfed                      # status: registered / online

On owner ``i``'s machine::

    flower-supernode --superlink <provider>:9093 --root-certificates ca.crt \\
        --auth-supernode-private-key owner-<i>.key \\
        --node-config 'owner-dir="/data/owner-i" partition-id=<i>'
    # or --node-config node.toml (a TOML file of key = value lines)

Then, on the provider's machine::

    flwr run <app_dir> blindfed --run-config 'num-rounds=2'    # prints the run id
    flwr log <run-id> blindfed --stream                        # the ServerApp's log
    flwr list blindfed --run-id <run-id> --format json         # status finished:completed

The owner needs only outbound HTTPS to ``<provider>:9093``; nothing listens on the owner's
machine except the SuperNode's Runtime API on ``127.0.0.1:9094``. A SuperNode killed hard
stays "online" at the SuperLink for up to two heartbeat intervals (60 s) and cannot log in
again until then; :meth:`LocalFederation.restart_owner` retries until it can.

**Do not expose the SuperLink's port as is.** In Flower 1.42 the Control API (``flwr run``,
``flwr supernode register``, ``flwr log``) and the Runtime API (``acquire-task``: the caller
acts as a ServerApp) share the Fleet API's port and are not authenticated (account login
needs Flower's enterprise OIDC plugin; SuperExec auth is ignored with ``--isolation
subprocess``); SuperNode authentication guards only the Fleet API. Whoever reaches the port
can register a key or run code on the provider's machine. Bind the SuperLink to
``127.0.0.1`` and forward only ``/v1/fleet/`` to the owners (TLS reverse proxy), or restrict
the port to the owners' addresses (firewall, VPN, SSH tunnel).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from blindfed.atomic import write_atomically

ConfigValue = str | int | float | bool

CONNECTION_NAME = "blindfed"
"""Name of the SuperLink connection written to the ``flwr`` CLI's ``config.toml``."""

_TAG_VAR = "BLINDFED_FEDERATION_TAG"
_NODE_READY = "SuperNode ID:"
_FINISHED = "finished"


# ------------------------------------------------------------------------------------------
# certificates and keys


@dataclass(frozen=True)
class Certificates:
    """Paths of a self-signed CA and a server certificate signed by it (PEM)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's ECDSA P-384 key pair, in OpenSSH format."""

    private_key: Path
    public_key: Path


def make_certificates(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), *, days: int = 365
) -> Certificates:
    """Write a self-signed CA and a server certificate for ``hosts`` into ``directory``.

    Files: ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` (keys mode 0600). ``hosts``
    become the server certificate's subject alternative names (IP addresses or DNS names);
    for a SuperLink on another machine include its public name *and* ``127.0.0.1``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("make_certificates needs at least one host")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blindfed local CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )

    pem = serialization.Encoding.PEM
    no_pass = serialization.NoEncryption()
    certs = Certificates(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    certs.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    write_atomically(
        certs.ca_key,
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_pass),
        private=True,
    )
    certs.server_cert.write_bytes(server_cert.public_bytes(pem))
    write_atomically(
        certs.server_key,
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_pass),
        private=True,
    )
    return certs


def make_node_keys(directory: Path, count: int, *, prefix: str = "owner") -> list[NodeKey]:
    """Write ``count`` SuperNode key pairs ``<prefix>-<i>.key`` / ``<prefix>-<i>.pub``.

    ECDSA on NIST P-384, OpenSSH format (what ``flower-supernode
    --auth-supernode-private-key`` and ``flwr supernode register`` read); the private keys
    are unencrypted, mode 0600. Equivalent to ``ssh-keygen -t ecdsa -b 384 -N ""``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        node_key = NodeKey(directory / f"{prefix}-{i}.key", directory / f"{prefix}-{i}.pub")
        write_atomically(
            node_key.private_key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            private=True,
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        node_key.public_key.write_bytes(public + f" {prefix}-{i}\n".encode())
        keys.append(node_key)
    return keys


# ------------------------------------------------------------------------------------------
# processes


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


def _tagged(tag: str, *, prefix: bool = False) -> list[int]:
    """Pids whose environment has ``BLINDFED_FEDERATION_TAG=tag`` (or starting with it)."""
    needle = f"{_TAG_VAR}={tag}".encode()
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


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
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


class _Process:
    """A started process (in its own session), its log, and its environment tag."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, tag: str):
        self.name, self.cmd, self.log, self.tag = name, cmd, log, tag
        self.log_offset = log.stat().st_size if log.exists() else 0
        self._log_file: IO[bytes] = log.open("ab")
        self._log_file.write(f"\n==== {time.ctime()} $ {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self.popen = subprocess.Popen(
            cmd,
            env={**env, _TAG_VAR: tag},
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
        victims = set(_descendants(pid)) | set(_tagged(self.tag))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _signal_all(sorted(victims), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._log_file.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(name: str) -> str:
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


def _write_toml_config(path: Path, config: Mapping[str, ConfigValue]) -> Path:
    lines = [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in config.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"---- {path.name} (last {min(lines, len(text))} lines) ----\n" + "\n".join(
        text[-lines:]
    )


def _json_from(output: str) -> dict:
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"no JSON in output: {output!r}")
    return json.loads(output[start : end + 1])


# ------------------------------------------------------------------------------------------
# the federation


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
            self.superlink_port = _free_port()
            self.node_ports = [_free_port() for _ in range(owners)]
        else:
            self.superlink_port = base_port
            self.node_ports = [base_port + 1 + i for i in range(owners)]
        self.address = f"127.0.0.1:{self.superlink_port}"
        self.certificates: Certificates | None = None
        self.node_keys: list[NodeKey] = []
        self.node_ids: list[int | None] = [None] * owners
        self._superlink: _Process | None = None
        self._nodes: list[_Process | None] = [None] * owners
        self._extras: list[_Process] = []
        self._started = False

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- environment ---------------------------------------------------------------------

    def _env(self, flwr_home: Path) -> dict[str, str]:
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env.update(
            FLWR_HOME=str(flwr_home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        flwr_home.mkdir(parents=True, exist_ok=True)
        return env

    @property
    def cli_home(self) -> Path:
        """``FLWR_HOME`` of the ``flwr`` CLI (its ``config.toml`` names this SuperLink)."""
        return self.workdir / "flwr-home"

    def flwr(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """Run ``flwr <args>`` against this federation's SuperLink; return its stdout.

        Output is appended to ``logs/flwr.log``; raises :class:`RuntimeError` on failure
        when ``check``.
        """
        cmd = [_executable("flwr"), *args]
        env = {**self._env(self.cli_home), _TAG_VAR: f"{self.tag}:cli", "COLUMNS": "200"}
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
            raise RuntimeError(f"flwr {' '.join(args)} timed out after {timeout} s") from err
        with (self.logs / "flwr.log").open("a") as log:
            log.write(f"\n==== {time.ctime()} $ flwr {' '.join(args)} -> {result.returncode}\n")
            log.write(result.stdout)
            log.write(result.stderr)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"flwr {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout

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
                self.node_ids[i] = int(_json_from(out)["node-id"])
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
        cmd = [_executable("flower-superlink")]
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
        cmd = [_executable("flower-supernode"), "--superlink", self.address]
        if self.certificates is not None:
            cmd += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            cmd.append("--insecure")
        key = private_key or (self.node_keys[index].private_key if self.node_auth else None)
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        if self.node_configs is not None and self.node_configs[index]:
            path = _write_toml_config(home / "node-config.toml", self.node_configs[index])
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
        self._superlink = _Process(
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
                    "flower-superlink exited during startup\n" + _tail(self._superlink.log)
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
                    "flower-superlink did not answer in time\n" + _tail(self._superlink.log)
                )
            time.sleep(0.2)

    def _start_node(self, index: int) -> None:
        home = self.workdir / f"owner-{index}"
        self._nodes[index] = _Process(
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
        while _NODE_READY not in node.log_since_start():
            if not node.running():
                raise RuntimeError(
                    f"SuperNode {index} exited during startup ({node.popen.returncode})\n"
                    + _tail(node.log)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperNode {index} did not log in\n" + _tail(node.log))
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
        _signal_all(_tagged(self.tag, prefix=True), signal.SIGKILL)

    def processes(self) -> list[int]:
        """Pids of the live processes this federation started, however deep (found through
        the ``BLINDFED_FEDERATION_TAG`` environment variable they all inherit)."""
        return [p for p in _tagged(self.tag, prefix=True) if _alive(p)]

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
            while _NODE_READY not in node.log_since_start() and node.running():
                if time.monotonic() > deadline:
                    node.kill(grace=0)
                    raise RuntimeError(f"SuperNode {index} did not log in\n" + _tail(node.log))
                time.sleep(0.2)
            if _NODE_READY in node.log_since_start():
                return
            node.kill(grace=0)
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperNode {index} could not log in\n" + _tail(node.log))
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
        cmd = self.supernode_command(like, port=_free_port())
        if "--auth-supernode-private-key" in cmd:
            at = cmd.index("--auth-supernode-private-key")
            del cmd[at : at + 2]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        proc = _Process(
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
        runs = _json_from(out)["runs"]
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
            args += ["--run-config", str(_write_toml_config(path, run_config))]
        out = self.flwr(*args)
        payload = _json_from(out)
        if not payload.get("success") or not payload.get("run-id"):
            raise RuntimeError(f"flwr run did not start a run: {out}")
        run_id = str(payload["run-id"])
        run_log = self.logs / f"run-{run_id}.log"
        streamer = _Process(
            f"log-{run_id}",
            [_executable("flwr"), "log", run_id, CONNECTION_NAME, "--stream"],
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
                if status["status"].startswith(_FINISHED):
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
        if status["status"] != f"{_FINISHED}:completed":
            raise RuntimeError(
                f"run {run_id} ended {status['status']}: {status.get('status-details')}\n"
                + self._log_tails(run_log)
            )
        return run_id

    def _log_tails(self, *first: Path) -> str:
        paths = [*first, self.logs / "superlink.log"]
        paths += [self.logs / f"owner-{i}.log" for i in range(self.owners)]
        return "\n".join(_tail(p) for p in paths)
