"""LocalFederation: Flower's deployment runtime on loopback, TLS and SuperNode auth on.

One SuperLink and three SuperNodes as real processes; a throwaway app (written into tmp_path)
queries every node twice; owner 2 is SIGKILLed while the ServerApp waits for the second
round's replies, and the ServerApp finishes with the two survivors' replies. Then a SuperNode
with an unregistered key is refused, and nothing is left running after ``stop``.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="flwr (Flower) is not installed")

from blindfed.fl.deploy import (
    LocalFederation,
    make_certificates,
    make_node_keys,
)

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "deploytest"
version = "1.0.0"
description = "LocalFederation test app"
license = "Apache-2.0"
dependencies = ["flwr>=1.42"]

[tool.flwr.app]
publisher = "blindfed"

[tool.flwr.app.components]
serverapp = "deploytest_app.app:server_app"
clientapp = "deploytest_app.app:client_app"

[tool.flwr.app.config]
result-path = ""
round-timeout = 20.0
"""

APP = """\
import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    node_ids = sorted(grid.get_node_ids())
    rounds = []
    for rnd in (1, 2):
        timeout = float(context.run_config["round-timeout"]) if rnd == 2 else 60.0
        payload = ConfigRecord({"round": rnd, "blob": bytes(range(256)) * 4})
        messages = [
            Message(RecordDict({"q": payload}), dst_node_id=n, message_type="query")
            for n in node_ids
        ]
        replies = grid.send_and_receive(messages, timeout=timeout)
        rounds.append(
            [
                dict(r.content["reply"]) if not r.has_error() else {"error": str(r.error)}
                for r in replies
            ]
        )
    Path(context.run_config["result-path"]).write_text(
        json.dumps({"node_ids": node_ids, "rounds": rounds})
    )


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    rnd = int(msg.content["q"]["round"])
    config = context.node_config
    seen = int(context.state["seen"]["n"]) + 1 if "seen" in context.state else 1
    context.state["seen"] = ConfigRecord({"n": seen})
    Path(config["marker-dir"], f"owner-{config['partition-id']}-round-{rnd}").touch()
    if int(config["slow-round"]) == rnd:
        time.sleep(120)  # killed before it replies
    reply = ConfigRecord(
        {
            "node-id": context.node_id,
            "owner-dir": str(config["owner-dir"]),
            "partition-id": int(config["partition-id"]),
            "round": rnd,
            "seen": seen,
            "blob-bytes": len(msg.content["q"]["blob"]),
        }
    )
    return Message(RecordDict({"reply": reply}), reply_to=msg)
"""


def _write_app(root: Path) -> Path:
    app_dir = root / "deploytest"
    (app_dir / "deploytest_app").mkdir(parents=True)
    (app_dir / "pyproject.toml").write_text(PYPROJECT)
    (app_dir / "deploytest_app" / "__init__.py").write_text("")
    (app_dir / "deploytest_app" / "app.py").write_text(APP)
    return app_dir


def test_certificates_and_keys(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    certs = make_certificates(tmp_path / "certs", hosts=("127.0.0.1", "provider.example"))
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["provider.example"]
    for key in (certs.ca_key, certs.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    keys = make_node_keys(tmp_path / "keys", 2)
    assert len(keys) == 2
    for node_key in keys:
        assert stat.S_IMODE(node_key.private_key.stat().st_mode) == 0o600
        private = load_ssh_private_key(node_key.private_key.read_bytes(), None)
        public = load_ssh_public_key(node_key.public_key.read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        assert public == private.public_key()


def test_local_federation_tls_auth_dropout(tmp_path: Path) -> None:
    app_dir = _write_app(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    node_configs = [
        {
            "owner-dir": str(tmp_path / f"owner{i}"),
            "partition-id": i,
            "marker-dir": str(markers),
            "slow-round": 2 if i == 2 else 0,
        }
        for i in range(3)
    ]
    result_path = tmp_path / "result.json"
    fed = LocalFederation(tmp_path / "fed", app_dir, owners=3, node_configs=node_configs)
    with fed:
        assert fed.tls and fed.node_auth
        assert len(fed.processes()) >= 4  # SuperLink, 3 SuperNodes (+ their SuperExecs)
        assert all(node_id is not None for node_id in fed.node_ids)

        killed = threading.Event()

        def kill_owner_2_in_round_2() -> None:
            deadline = time.monotonic() + 80
            while not (markers / "owner-2-round-2").exists():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.1)
            fed.kill_owner(2)
            killed.set()

        killer = threading.Thread(target=kill_owner_2_in_round_2, daemon=True)
        killer.start()
        run_id = fed.run({"result-path": str(result_path), "round-timeout": 20.0}, timeout=80)
        killer.join(timeout=5)
        assert run_id
        assert killed.is_set(), "owner 2 never received round 2"
        assert not fed.owner_running(2)

        result = json.loads(result_path.read_text())
        assert sorted(result["node_ids"]) == sorted(fed.node_ids)
        round1, round2 = result["rounds"]
        assert sorted(r["partition-id"] for r in round1) == [0, 1, 2]
        for reply in round1:
            i = reply["partition-id"]
            assert reply["owner-dir"] == str(tmp_path / f"owner{i}")
            assert reply["node-id"] == fed.node_ids[i]
            assert reply["blob-bytes"] == 1024
            assert reply["seen"] == 1
        # the ServerApp's send_and_receive timed out on owner 2 and kept the survivors
        assert sorted(r["partition-id"] for r in round2) == [0, 1]
        assert all(r["seen"] == 2 for r in round2)  # context.state survives between messages
        assert (fed.logs / f"run-{run_id}.log").exists()

        # a SuperNode whose key the SuperLink does not know is refused
        rogue = make_node_keys(tmp_path / "rogue", 1, prefix="rogue")[0]
        intruder = fed.start_extra_node("intruder", private_key=rogue.private_key)
        assert intruder.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in (fed.logs / "intruder.log").read_text()
        assert (
            "No SuperNode found with the given public key"
            in (fed.logs / "superlink.log").read_text()
        )
        listing = fed.flwr("supernode", "list", "--format", "json")
        nodes = json.loads(listing[listing.index("{") :])["nodes"]
        assert sorted(int(n["node-id"]) for n in nodes) == sorted(fed.node_ids)
    assert fed.processes() == []
