"""Federated adaptation: partitions, FedAvg, and the whole protocol in one process with
owners that drop out, restart and resume (the Flower runtimes are in test_flower.py)."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed import ckks  # noqa: E402
from blindfed.data import dirichlet_partition, natural_partition  # noqa: E402
from blindfed.fl.fedavg import LocalTraining, Schedule, apply_sum, contribution, get_vector  # noqa: E402
from blindfed.fl.owner_data import OwnerData  # noqa: E402
from blindfed.fl.owner_node import OwnerNode  # noqa: E402
from blindfed.fl.server import FederationConfig, FederationServer  # noqa: E402
from blindfed.fl.transport import LocalTransport  # noqa: E402
from blindfed.protocol import Provider  # noqa: E402


def test_dirichlet_partition_covers_every_sample_once_and_skews_with_small_alpha():
    labels = np.repeat(np.arange(10), 50)
    for alpha in (100.0, 1.0, 0.01):
        parts = dirichlet_partition(labels, 5, alpha, seed=1)
        assert sorted(np.concatenate(parts).tolist()) == list(range(500))
    flat = dirichlet_partition(labels, 5, 100.0, seed=1)
    skewed = dirichlet_partition(labels, 5, 0.01, seed=1, min_samples=0)

    def classes_per_owner(parts):
        return np.mean([len(np.unique(labels[p])) for p in parts if len(p)])

    assert classes_per_owner(flat) == 10
    assert classes_per_owner(skewed) < 5
    assert all(
        (a == b).all()
        for a, b in zip(
            dirichlet_partition(labels, 5, 1.0, seed=3),
            dirichlet_partition(labels, 5, 1.0, seed=3),
            strict=True,
        )
    )
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(labels, 5, 0.0)
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_partition(labels[:4], 5, 1.0)
    assert [p.tolist() for p in natural_partition(np.array([2, 1, 2, 1, 3]))] == [
        [1, 3],
        [0, 2],
        [4],
    ]


def test_schedule_and_weighted_average():
    s = Schedule()
    assert (s.lr_at(24), s.lr_at(25), s.lr_at(39), s.lr_at(40)) == pytest.approx(
        (1e-3, 1e-4, 1e-4, 1e-5)
    )
    with pytest.raises(ValueError, match="round"):
        s.lr_at(51)
    from blindfed.fl.fedavg import make_model

    model = make_model(2, 4, 3, rank=1)
    start = get_vector(model)
    d1, d2 = np.full_like(start, 1.0), np.full_like(start, 4.0)
    total = contribution(d1, [1, 0], 30) + contribution(d2, [0, 0], 10)
    assert apply_sum(model, total) == 40
    # (30 * 1 + 10 * 4) / 40 = 1.75, up to float32 weights.
    assert np.allclose(get_vector(model) - start, 1.75, atol=1e-5)
    assert model.seen_blocks.tolist() == [True, False]


@pytest.fixture(scope="module")
def student(make_student):
    return make_student(2)


def owners_for(
    tmp_path, count: int, samples: int = 24, *, allow_insecure: bool = False
) -> dict[int, OwnerNode]:
    rng = np.random.default_rng(0)
    nodes = {}
    for k in range(count):
        labels = rng.integers(0, 3, samples)
        # Class-dependent images, so that training has something to learn.
        images = 0.5 * rng.normal(size=(samples, 1, 8, 8)) + 0.3 * labels[:, None, None, None]
        data = OwnerData(images, labels, images[:6], labels[:6])
        node_id = 1000 + 17 * k
        nodes[node_id] = OwnerNode(
            tmp_path / f"owner-{k}", data, name=str(node_id), allow_insecure=allow_insecure
        )
    return nodes


def config(rounds: int) -> FederationConfig:
    return FederationConfig(
        rounds=rounds,
        lr=0.05,
        local=LocalTraining(epochs=1, batch_size=8),
        rank=2,
        classes=3,
        timeout=5.0,
    )


@pytest.mark.parametrize("mode", ["simulate", "execute"])
def test_rounds_sum_exactly_the_survivors_when_an_owner_drops_mid_round(tmp_path, student, mode):
    parameters = None
    if mode == "execute":
        levels = Provider(student, mode="simulate").parameters.max_level
        parameters = ckks.Parameters(log_n=11, levels=levels, scale_bits=30, insecure=True)
    provider = Provider(student, mode=mode, parameters=parameters, rng=random.Random(0))
    # The provider serves one owner's passes at a time: one session, one set of keys, open.
    open_sessions = []
    serve = provider.forward
    provider.forward = lambda *args: open_sessions.append(len(provider._sessions)) or serve(*args)
    # The execute-mode parameters are small test ones, which owners refuse unless allowed.
    owners = owners_for(tmp_path / "owners", 3, allow_insecure=mode == "execute")
    victim = sorted(owners)[1]
    # The victim crashes after training in round 2, before sending its masked update.
    transport = LocalTransport(
        owners,
        lambda action, node, r: node == victim and action == "mask" and r == 2,
        fresh=True,
    )
    server = FederationServer(provider, config(2), tmp_path / "lsp", audit=True)
    before = get_vector(server.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # insecure test parameters
        history = server.run(transport)
    assert [h["survivors"] for h in history] == [sorted(owners), sorted(set(owners) - {victim})]
    assert open_sessions and set(open_sessions) == {1}
    # The rounds need no keys: every session ended with its owner's passes.
    assert not provider._sessions and server.online["ready"] == 3
    assert history[1]["dropped"] == [victim]
    for h in history:
        survivors = h["survivors"]
        expected = sum(
            np.load(owners[n].directory / "rounds" / str(h["round"]) / "contribution.npy")
            for n in survivors
        )
        got = np.load(tmp_path / "lsp" / "audit" / f"round_{h['round']}.npy")
        # Exact in the fixed-point ring: each value is off by at most half a step.
        assert np.abs(got - expected).max() <= len(survivors) * 2.0**-20
        assert got[-1] == sum(len(owners[n].data.train_labels) for n in survivors)
        assert 0 <= h["accuracy"] <= 100 and h["test_samples"] > 0
        assert all(b > 0 for b in h["bytes_per_owner"].values())
    assert not np.allclose(get_vector(server.model), before)
    # The round's secrets are gone once unmasked; the victim never reached that stage.
    for n in owners:
        left = (owners[n].directory / "rounds" / "2" / "seed").exists()
        assert left == (n == victim)


def test_a_restarted_provider_resumes_after_its_last_round_without_new_passes(tmp_path, student):
    owners = owners_for(tmp_path / "owners", 3)
    first = FederationServer(Provider(student, mode="simulate"), config(1), tmp_path / "lsp")
    first.run(LocalTransport(owners))
    weights = get_vector(first.model)
    # The provider restarts (a new process: new sessions) and is asked for 2 rounds.
    transport = LocalTransport(owners, fresh=True)
    second = FederationServer(Provider(student, mode="simulate"), config(2), tmp_path / "lsp")
    assert second.completed == 1 and np.array_equal(get_vector(second.model), weights)
    history = second.run(transport)
    assert [h["round"] for h in history] == [1, 2]
    assert "hello" not in transport.asked and "pass" not in transport.asked


def test_a_restarted_owner_resumes_its_cached_passes(tmp_path, student):
    owners = owners_for(tmp_path / "owners", 2)
    victim = sorted(owners)[0]
    calls = {"n": 0}

    def crash_on_third_pass(action, node, r):
        if action == "pass" and node == victim:
            calls["n"] += 1
            return calls["n"] == 3
        return False

    transport = LocalTransport(owners, crash_on_third_pass, fresh=True)
    # Every block revealed: the third pass call comes after the first block's reply (an
    # owner's training and test images share one batch).
    provider = Provider(student, mode="simulate", privacy=False)
    server = FederationServer(provider, config(1), tmp_path / "lsp")
    with pytest.raises(RuntimeError, match="1 owners"):
        server.run(transport)
    cached = sorted(p.name for p in (owners[victim].directory / "passes").rglob("block_*.npy"))
    assert cached  # the blocks it received before the crash
    # The owner comes back; a new run completes its passes from the cache.
    transport = LocalTransport(owners, fresh=True)
    provider = Provider(student, mode="simulate", privacy=False)
    server = FederationServer(provider, config(1), tmp_path / "lsp")
    history = server.run(transport)
    assert history[0]["survivors"] == sorted(owners)


def test_an_owner_refuses_a_second_different_unmask_request(tmp_path, student):
    owners = owners_for(tmp_path / "owners", 3)
    server = FederationServer(Provider(student, mode="simulate"), config(1), tmp_path / "lsp")
    server.run(LocalTransport(owners))
    node = next(iter(owners.values()))
    # The round is over: its secrets were shredded, nothing more can be unmasked.
    with pytest.raises(RuntimeError, match="no secure-aggregation state"):
        node.unmask(1, b"anything")


def test_owner_data_is_validated(tmp_path):
    with pytest.raises(ValueError, match="train"):
        OwnerData(np.zeros((3, 8, 8)), np.zeros(3), np.zeros((1, 1, 8, 8)), np.zeros(1))
    np.savez(tmp_path / "d.npz", train_images=np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="lacks"):
        OwnerData.load(tmp_path / "d.npz")
    share = OwnerData.digits_share(1, 3, train_samples=300, test_samples=60)
    assert share.train_images.shape[1:] == (1, 28, 28) and len(share.test_labels) == 20
    assert torch.is_tensor(torch.as_tensor(share.train_labels))


def test_test_images_share_the_training_group_and_keep_their_order(tmp_path, student):
    owners = owners_for(tmp_path / "owners", 2)
    provider = Provider(student, mode="simulate", window=4)
    FederationServer(provider, config(1), tmp_path / "lsp").online_phase(
        LocalTransport(owners), sorted(owners)
    )
    node = next(iter(owners.values()))
    assert [b for b, _, _ in node.batches()] == ["batch-0"]  # 24 + 6 samples, one group
    test_x, test_y = node.outputs("test")
    _, train_y = node.outputs("train")
    assert len(train_y) == 24 and sorted(train_y.tolist()) == sorted(node.data.train_labels)
    assert np.array_equal(test_y, node.data.test_labels)
    # The reference: the test images alone, every block revealed, nothing permuted.
    mirror = Provider(student, mode="simulate", privacy=False)
    from blindfed.protocol import DataOwner

    reference = DataOwner("reference")
    mirror.register(reference.hello(mirror.offer()))
    want = reference.forward(mirror.forward, node.data.test_images).outputs
    # The last block is always revealed; the test samples are in the order of their images.
    assert np.allclose(test_x[:, -1], want[:, -1])
