"""The provider's side of a federation (:class:`FederationServer`) with its owners in one
process: rounds sum exactly the survivors, restarted parties resume, and bad bytes or lost
owners cost a round, not the run (the Flower runtimes are in test_fl_app.py)."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed import ckks  # noqa: E402
from blindfed.fl.fedavg import LocalTraining, get_vector  # noqa: E402
from blindfed.fl.owner_data import OwnerData  # noqa: E402
from blindfed.fl.owner_node import OwnerNode  # noqa: E402
from blindfed.fl.server import FederationConfig, FederationServer, RoundFailedError  # noqa: E402
from blindfed.fl.transport import LocalTransport  # noqa: E402
from blindfed.protocol import Provider  # noqa: E402


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


def test_the_server_optimizer_state_is_checkpointed(tmp_path, student):
    owners = owners_for(tmp_path / "owners", 2)

    def momentum(rounds: int) -> FederationConfig:
        c = config(rounds)
        c.server_optimizer, c.server_lr = "fedavgm", 0.5
        return c

    first = FederationServer(Provider(student, mode="simulate"), momentum(1), tmp_path / "lsp")
    first.run(LocalTransport(owners))
    assert first.optimizer.m is not None and np.abs(first.optimizer.m).max() > 0
    second = FederationServer(Provider(student, mode="simulate"), momentum(2), tmp_path / "lsp")
    assert second.completed == 1 and np.array_equal(second.optimizer.m, first.optimizer.m)


class _Tamper(LocalTransport):
    """Corrupts one owner's reply to one action."""

    def __init__(self, owners, victim: int, action: str, field: str, corrupt) -> None:
        super().__init__(owners)
        self.victim, self.action, self.field, self.corrupt = victim, action, field, corrupt

    def ask(self, action, requests, timeout):
        replies = super().ask(action, requests, timeout)
        if action == self.action and self.victim in replies:
            reply = replies[self.victim]
            reply[self.field] = self.corrupt(reply[self.field])
        return replies


@pytest.mark.parametrize(
    ("action", "field", "corrupt"),
    [
        ("hello", "hello", lambda b: b[:40] + b"\x00" * 8 + b[48:]),
        ("hello", "hello", lambda b: b"{" * 30_000),
        ("pass", "request", lambda b: b[:-3] if b else b),
    ],
)
def test_one_owners_bad_bytes_leave_it_out_and_the_others_finish(
    tmp_path, student, action, field, corrupt
):
    owners = owners_for(tmp_path / "owners", 3)
    victim = sorted(owners)[1]
    server = FederationServer(Provider(student, mode="simulate"), config(1), tmp_path / "lsp")
    transport = _Tamper(owners, victim, action, field, corrupt)
    ready = server.online_phase(transport, sorted(owners))
    assert ready == sorted(set(owners) - {victim})
    reason = (owners[victim].directory / "refused.txt").read_text()
    assert "refused its" in reason and ("hello" in reason or "forward request" in reason)


def test_a_corrupted_unmasking_answer_is_refused_not_applied(tmp_path, student):
    owners = owners_for(tmp_path / "owners", 3)
    victim = sorted(owners)[0]

    def flip(answer: bytes) -> bytes:
        b = bytearray(answer)
        b[-10] ^= 0x40  # inside the last self-mask share (a 4-byte count follows)
        return bytes(b)

    server = FederationServer(Provider(student, mode="simulate"), config(1), tmp_path / "lsp")
    before = {k: v.clone() for k, v in server.model.state_dict().items()}
    transport = _Tamper(owners, victim, "unmask", "answer", flip)
    # Every attempt is corrupted: retried (a fresh secure aggregation each time), then refused.
    with pytest.raises(RoundFailedError, match="secure aggregation: the unmasked sum"):
        server.run(transport)
    assert transport.asked.count("unmask") == server.config.retries + 1
    after = server.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert server.completed == 0


def test_a_round_that_loses_too_many_owners_is_retried_not_the_run(tmp_path, student):
    owners = owners_for(tmp_path / "owners", 3)
    late = sorted(owners)[1:]
    # Two of three owners miss the masking deadline in round 1's first attempt only (a busy
    # machine): the threshold (2) is not met, the round is retried and completes with all.
    transport = LocalTransport(owners)
    ask = transport.ask

    def slow_first_attempt(action, requests, timeout):
        replies = ask(action, requests, timeout)
        first = all(q.get("attempt") == 0 for q in requests.values())
        if action == "mask" and first:
            return {n: v for n, v in replies.items() if n not in late}
        return replies

    transport.ask = slow_first_attempt
    lines: list[str] = []
    server = FederationServer(
        Provider(student, mode="simulate"), config(1), tmp_path / "lsp", progress=lines.append
    )
    history = server.run(transport)
    assert history[0]["attempts"] == 2 and history[0]["survivors"] == sorted(owners)
    said = "\n".join(lines)
    assert f"no mask answer from owners {late}" in said and "retrying (attempt 2 of 3)" in said
    # The owners kept the two attempts apart.
    assert (owners[late[0]].directory / "rounds" / "1.1" / "contribution.npy").exists()
