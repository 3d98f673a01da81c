"""The provider's blocks on a Ray cluster: a local one, a head and two worker nodes (separate
raylets and worker processes on this machine), against the in-process provider."""

from __future__ import annotations

import os
import random
import signal
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed import ckks  # noqa: E402
from blindfed.protocol import DataOwner, Provider  # noqa: E402
from blindfed.protocol.evaluation import PassPlan, part_bounds  # noqa: E402
from blindfed.protocol.messages import BlockOutput, decode  # noqa: E402
from blindfed.protocol.permutation import label_windows  # noqa: E402

# 8x8 images give 5 tokens: 204 samples fill a group at N = 2^11, so 300 samples make two.
SAMPLES = 300
OWNERS = 3


def test_parts_are_whole_windows_and_in_execute_mode_the_groups():
    labels = np.sort(np.random.default_rng(0).integers(0, 3, SAMPLES))
    windows = label_windows(labels.tolist(), 8, 204)
    assert part_bounds(windows, 204) == [(0, 204), (204, 300)]
    # Simulate mode lets windows cross a group: a part ends at the first boundary past it.
    assert part_bounds([3, 3, 3], 4) == [(0, 6), (6, 9)]
    plan = PassPlan(0, 1, (0,), (1, 0, 2, 3), 8)
    assert plan.restricted(2, 4).order == (0, 1)
    with pytest.raises(ValueError, match="windows"):
        plan.restricted(1, 3)


def test_without_ray_the_option_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    from blindfed.protocol.cluster import RayCluster

    with pytest.raises(ImportError, match=r"blindfed\[flower\]"):
        RayCluster()


@pytest.fixture(scope="module")
def cluster_address():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # The head schedules nothing: the two worker nodes are where evaluators can run.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def student(make_student):
    return make_student(3)


@pytest.fixture(scope="module")
def small_params(student) -> ckks.Parameters:
    levels = Provider(student, mode="simulate").parameters.max_level
    return ckks.Parameters(log_n=11, levels=levels, scale_bits=30, insecure=True)


def owners_data():
    rng = np.random.default_rng(5)
    return [(rng.random((SAMPLES, 1, 8, 8)), rng.integers(0, 3, SAMPLES)) for _ in range(OWNERS)]


def passes(provider: Provider, mode: str, *, on_refresh=None):
    """Every owner's pass, one owner after another: their outputs and every reply's pass
    (block, hidden blocks, permutation relative to the owner's last view)."""
    replies, outputs, refreshes = [], [], [0]
    for k, (images, labels) in enumerate(owners_data()):
        owner = DataOwner(f"owner-{k}", allow_insecure=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # insecure test parameters
            provider.register(owner.hello(provider.offer()))

        def forward(request: bytes, refresh, owner=owner) -> bytes:
            def counted(req: bytes) -> bytes:
                refreshes[0] += 1
                if on_refresh is not None:
                    on_refresh(refreshes[0])
                return refresh(req)

            reply = provider.forward(request, counted)
            msg = decode(reply, BlockOutput)
            replies.append((owner.name, msg.block, msg.hidden, msg.relative))
            return reply

        outputs.append(owner.forward(forward, images, labels, cache=False))
    return replies, outputs, refreshes[0]


def assert_same_outputs(a, b, tolerance: float) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.revealed == y.revealed).all() and (x.labels == y.labels).all()
        span = max(float(np.ptp(y.outputs)), 1.0)
        assert np.abs(x.outputs - y.outputs).max() <= tolerance * span


@pytest.mark.parametrize("mode", ["simulate", "execute"])
def test_a_cluster_gives_the_in_process_permutations_and_outputs(
    cluster_address, student, small_params, mode
):
    from blindfed.protocol.cluster import RayCluster

    here = Provider(student, mode=mode, parameters=small_params, rng=random.Random(7))
    want, want_out, want_refreshes = passes(here, mode)
    cluster = RayCluster()
    provider = Provider(
        student, mode=mode, parameters=small_params, rng=random.Random(7), cluster=cluster
    )
    try:
        # One evaluator per worker node, each with its node's one CPU.
        assert len({node for node, _ in cluster.where()}) == 2 == provider.concurrency
        got, got_out, got_refreshes = passes(provider, mode)
        assert got == want  # the same blocks revealed and hidden, the same permutations
        assert len({block for _, block, _, _ in got}) > 1
        if mode == "execute":
            # Two groups a request, refreshed apart: more round trips (at most twice as many),
            # same outputs up to the flooding noise; the driver keeps no keys (the store does).
            assert 0 < want_refreshes < got_refreshes <= 2 * want_refreshes
            assert all(s.keys is None for s in provider._sessions.values())
            assert_same_outputs(got_out, want_out, 1e-3)
        else:
            assert_same_outputs(got_out, want_out, 0.0)
    finally:
        cluster.shutdown()


def test_an_evaluator_killed_mid_pass_is_survived(cluster_address, student, small_params, caplog):
    from blindfed.protocol.cluster import RayCluster

    here = Provider(student, mode="execute", parameters=small_params, rng=random.Random(11))
    want, want_out, _ = passes(here, "execute")
    cluster = RayCluster()
    provider = Provider(
        student,
        mode="execute",
        parameters=small_params,
        rng=random.Random(11),
        cluster=cluster,
    )
    try:
        before = {pid for _, pid in cluster.where()}

        def kill_every_evaluator(count: int) -> None:
            # Whichever evaluator asked for this refresh is waiting for it: killed mid-pass.
            if count == 2:
                for pid in before:
                    os.kill(pid, signal.SIGKILL)

        with caplog.at_level("WARNING", logger="blindfed.protocol"):
            got, got_out, _ = passes(provider, "execute", on_refresh=kill_every_evaluator)
        # The killed parts ran again on restarted evaluators (their refreshes answered again)
        # and the owners got what the in-process provider gives.
        assert "runs again elsewhere" in caplog.text
        assert not before & {pid for _, pid in cluster.where()}
        assert got == want
        assert_same_outputs(got_out, want_out, 1e-3)
    finally:
        cluster.shutdown()


def test_the_federation_serves_owners_at_once_on_a_cluster(cluster_address, student, tmp_path):
    import threading

    from blindfed.fl.owner_data import OwnerData
    from blindfed.fl.owner_node import OwnerNode
    from blindfed.fl.server import FederationConfig, FederationServer
    from blindfed.fl.transport import LocalTransport
    from blindfed.protocol.cluster import RayCluster

    def owners(directory):
        nodes = {}
        for k, (images, labels) in enumerate(owners_data()):
            data = OwnerData(images[:40], labels[:40], images[40:46], labels[40:46])
            nodes[k + 1] = OwnerNode(directory / f"owner-{k}", data, name=str(k + 1))
        return nodes

    def online(provider, directory):
        nodes = owners(directory)
        server = FederationServer(provider, FederationConfig(classes=3), directory / "lsp")
        assert server.online_phase(LocalTransport(nodes), sorted(nodes)) == sorted(nodes)
        return [nodes[n].outputs("train") for n in sorted(nodes)]

    # Without privacy nothing is drawn, so the order owners are served in cannot matter.
    want = online(Provider(student, mode="simulate", privacy=False), tmp_path / "here")
    cluster = RayCluster()
    provider = Provider(student, mode="simulate", privacy=False, cluster=cluster)
    assert provider.concurrency == 2
    callers = set()
    serve = provider.forward

    def forward(request, refresh):
        callers.add(threading.current_thread().name)
        return serve(request, refresh)

    provider.forward = forward
    try:
        got = online(provider, tmp_path / "cluster")
    finally:
        cluster.shutdown()
    # Owners were served from a pool of threads (two at a time), with the same outputs.
    assert callers and all(name.startswith("blindfed-owner") for name in callers)
    for (x, y), (wx, wy) in zip(got, want, strict=True):
        assert np.array_equal(y, wy) and np.array_equal(x, wx)


def test_the_run_config_puts_a_federation_on_the_cluster(cluster_address, tmp_path, monkeypatch):
    from blindfed.fl.run import ray_cluster, run_local
    from blindfed.protocol.cluster import RayCluster

    assert ray_cluster("") is None
    assert ray_cluster("local").address is None and ray_cluster("auto").address == "auto"
    used = []
    start = RayCluster.start

    def recorded(self, *args, **kwargs):
        used.append(self)
        return start(self, *args, **kwargs)

    monkeypatch.setattr(RayCluster, "start", recorded)
    settings = {
        "ray-address": "auto",
        "rounds": 1,
        "train-samples": 60,
        "test-samples": 30,
        "state-dir": str(tmp_path / "lsp"),
        "work-dir": str(tmp_path / "owners"),
    }
    result = run_local(settings, 2)
    assert result["online"]["ready"] == 2 and len(result["history"]) == 1
    # The run's cluster served it and was shut down with it.
    assert len(used) == 1 and used[0].concurrency == 0
