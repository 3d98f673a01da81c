"""The online phase: provider and owner over bytes, in both modes, with privacy boosting."""

from __future__ import annotations

import json
import pickle
import random
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed import ckks  # noqa: E402
from blindfed.block import PackedBatch  # noqa: E402
from blindfed.nn.adapter import AdaptedClassifier, TrainConfig, accuracy, train  # noqa: E402
from blindfed.nn.student import Student  # noqa: E402
from blindfed.protocol import DataOwner, MessageError, Provider  # noqa: E402
from blindfed.protocol.messages import (  # noqa: E402
    BlockOutput,
    ForwardRequest,
    Offer,
    OwnerHello,
    decode,
)


@pytest.fixture(scope="module")
def student(make_student) -> Student:
    return make_student(3)


@pytest.fixture(scope="module")
def small_params(student: Student) -> ckks.Parameters:
    levels = Provider(student, mode="simulate").parameters.max_level
    return ckks.Parameters(log_n=11, levels=levels, scale_bits=30, insecure=True)


IMAGES = np.random.default_rng(0).random((6, 1, 8, 8))
LABELS = np.array([0, 1, 0, 1, 2, 2])


def connect(provider: Provider, owner: DataOwner) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test parameters are insecure on purpose
        provider.register(owner.hello(provider.offer()))


def test_execute_agrees_with_simulate_and_records_only_public_material(student, small_params):
    outs, sent = {}, []
    for mode in ("execute", "simulate"):
        provider = Provider(student, mode=mode, parameters=small_params, rng=random.Random(3))
        owner = DataOwner("clinic", allow_insecure=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hello = owner.hello(provider.offer())
        provider.register(hello)

        def forward(request: bytes, refresh, mode=mode, provider=provider) -> bytes:
            def recorded_refresh(req: bytes) -> bytes:
                reply = refresh(req)
                sent.append(("refresh", reply)) if mode == "execute" else None
                return reply

            if mode == "execute":
                sent.append(("request", request))
            return provider.forward(request, recorded_refresh)

        if mode == "execute":
            sent.append(("hello", hello))
        outs[mode] = owner.forward(forward, IMAGES, LABELS)
    a, b = outs["execute"], outs["simulate"]
    assert (a.revealed == b.revealed).all() and a.revealed[-1]
    assert not (a.revealed[:-1] & a.revealed[1:]).any()
    # Hidden blocks reach the owner as zeros only.
    assert not a.outputs[:, ~a.revealed].any()
    # Same permutations (same provider randomness) and same polynomials: outputs agree.
    span = np.ptp(b.outputs[:, b.revealed])
    assert np.abs(a.outputs - b.outputs).max() < 1e-3 * max(span, 1.0)
    assert (a.labels == np.sort(LABELS)).all()
    # Every byte the owner sent parses, with strict decoders that refuse trailing bytes, as
    # public objects: evaluation keys, packed ciphertexts, re-encrypted refresh ciphertexts.
    assert {kind for kind, _ in sent} == {"hello", "request", "refresh"}
    for kind, data in sent:
        if kind == "hello":
            keys = ckks.EvaluationKeys.from_bytes(small_params, decode(data, OwnerHello).keys)
            assert keys.public_key is not None and keys.relin_key is not None
        elif kind == "request":
            PackedBatch.from_bytes(small_params, decode(data, ForwardRequest).payload)
        else:
            assert data[:4] == b"BFRF"
    # The secret key itself cannot be serialised or pickled.
    sk = ckks.SecretKey.generate(small_params)
    assert not hasattr(sk, "to_bytes")
    with pytest.raises(TypeError):
        pickle.dumps(sk)


def test_malformed_messages_are_refused_without_changing_state(student):
    provider = Provider(student, mode="simulate", rng=random.Random(0))
    owner = DataOwner()
    connect(provider, owner)
    good = None

    def capture(request: bytes, refresh) -> bytes:
        nonlocal good
        good = request
        return provider.forward(request, refresh)

    owner.forward(capture, IMAGES, LABELS)
    session = next(iter(provider._sessions.values()))
    before = dict(session.patterns)
    rng = np.random.default_rng(1)
    refused = 0
    for _ in range(200):
        bad = bytearray(good)
        for i in rng.integers(0, 300, size=3):  # envelope, header, array header
            bad[i] ^= int(rng.integers(1, 256))
        try:
            provider.forward(bytes(bad), lambda r: r)
        except ValueError:
            refused += 1
            assert session.patterns == before
        # A corruption can leave a valid message (another batch name): it is then served.
        before = dict(session.patterns)
    assert refused > 100
    for bad in (b"", good[:20], good + b"x", b"BFMG" + good[4:9]):
        with pytest.raises(ValueError):
            provider.forward(bad, lambda r: r)
    with pytest.raises(TypeError):
        provider.forward("text", lambda r: r)  # type: ignore[arg-type]
    msg = decode(good, ForwardRequest)
    for change in ({"windows": [7]}, {"block": 9}, {"session": "nope"}):
        fields = {**msg.__dict__, **change}
        with pytest.raises(MessageError):
            provider.forward(ForwardRequest(**fields).to_bytes(), lambda r: r)
    assert session.patterns == before


def test_a_forward_pass_resumes_from_its_cache(student, tmp_path):
    provider = Provider(student, mode="simulate", privacy=False)
    reference = DataOwner()
    connect(provider, reference)
    expected = reference.forward(provider.forward, IMAGES, LABELS)

    owner = DataOwner(cache_dir=tmp_path)
    connect(provider, owner)
    calls = []

    def crashing(request: bytes, refresh) -> bytes:
        calls.append(decode(request, ForwardRequest).block)
        if len(calls) == 2:
            raise ConnectionError("link lost")
        return provider.forward(request, refresh)

    with pytest.raises(ConnectionError):
        owner.forward(crashing, IMAGES, LABELS)
    calls.clear()
    restarted = DataOwner(cache_dir=tmp_path)
    connect(provider, restarted)
    got = restarted.forward(
        lambda r, f: calls.append(decode(r, ForwardRequest).block) or provider.forward(r, f),
        IMAGES,
        LABELS,
    )
    assert calls == [1, 2]  # block 0 came from the cache
    np.testing.assert_allclose(got.outputs, expected.outputs)


def test_adapters_beat_linear_probing_on_features_that_need_them():
    rng = np.random.default_rng(0)
    # The label is the sign of a product of two features of an earlier block: a linear head
    # on the last block cannot read it, the adapters can.
    x = rng.normal(size=(600, 3, 2, 4))
    y = (x[:, 0, 0, 0] * x[:, 0, 0, 1] > 0).astype(int)
    torch.manual_seed(0)
    probe = AdaptedClassifier(3, 4, 2, rank=0)
    adapted = AdaptedClassifier(3, 4, 2, rank=8)
    cfg = TrainConfig(epochs=60, lr=1e-2)
    train(probe, x[:400], y[:400], cfg)
    losses = train(adapted, x[:400], y[:400], cfg)
    assert losses[-1] < losses[0]
    assert accuracy(adapted, x[400:], y[400:]) > accuracy(probe, x[400:], y[400:]) + 15
    with pytest.raises(ValueError):
        adapted(torch.zeros(2, 2, 2, 4))
    with pytest.raises(ValueError, match="block_dropout"):
        train(adapted, x, y, TrainConfig(block_dropout=1.0))


def test_classify_keeps_the_order_and_matches_the_block_outputs(student):
    provider = Provider(student, mode="simulate", rng=random.Random(1))
    owner = DataOwner()
    connect(provider, owner)
    torch.manual_seed(0)
    model = AdaptedClassifier(3, 8, 4, rank=2)
    torch.nn.init.normal_(model.adapters[0].up.weight)  # a model whose adapters matter
    images = np.random.default_rng(2).random((9, 1, 8, 8))
    predicted = owner.classify(provider.forward, images, model)
    assert predicted.shape == (9,) and predicted.dtype.kind == "i"
    # Same outputs through forward (no labels: the order is kept, nothing is permuted).
    reference = Provider(student, mode="simulate", privacy=False)
    ref_owner = DataOwner()
    connect(reference, ref_owner)
    outputs = ref_owner.forward(reference.forward, images).outputs
    with torch.no_grad():
        logits = model(torch.as_tensor(outputs, dtype=torch.float32))
    # The pattern differs (hidden blocks are zeros), so compare the all-revealed path too.
    full = DataOwner()
    connect(reference, full)
    assert (full.classify(reference.forward, images, model) == logits.argmax(1).numpy()).all()
    reversed_ = full.classify(reference.forward, images[::-1], model)
    assert (reversed_ == logits.argmax(1).numpy()[::-1]).all()


def test_the_cache_is_keyed_by_the_inputs_not_only_the_batch_name(student, tmp_path):
    provider = Provider(student, mode="simulate", privacy=False)
    owner = DataOwner(cache_dir=tmp_path)
    connect(provider, owner)
    first = owner.forward(provider.forward, IMAGES, LABELS, batch_id="b")
    other = IMAGES[::-1].copy()
    with pytest.warns(UserWarning, match="other inputs"):
        second = owner.forward(provider.forward, other, LABELS, batch_id="b")
    assert not np.allclose(first.outputs, second.outputs)
    fresh = DataOwner()
    connect(provider, fresh)
    np.testing.assert_allclose(
        second.outputs, fresh.forward(provider.forward, other, LABELS).outputs
    )


def test_passes_cannot_skip_a_hidden_block_nor_exceed_the_sample_budget(student):
    provider = Provider(student, mode="simulate", rng=random.Random(0), sample_budget=12)
    owner = DataOwner()
    connect(provider, owner)
    requests = []

    def capture(request: bytes, refresh) -> bytes:
        requests.append(request)
        return provider.forward(request, refresh)

    owner.forward(capture, IMAGES, LABELS, batch_id="a")
    msg = decode(requests[0], ForwardRequest)
    # Asking for the last block directly (its input chosen, its output revealed): refused,
    # whether as a new pass or to skip ahead in one.
    for batch in ("new", "a"):
        fields = {**msg.__dict__, "block": 2, "batch": batch}
        with pytest.raises(MessageError, match="last block"):
            provider.forward(ForwardRequest(**fields).to_bytes(), lambda r: r)
    # A middle block starts a new pass whose first block is hidden.
    reply = decode(
        provider.forward(ForwardRequest(**{**msg.__dict__, "block": 1}).to_bytes(), lambda r: r),
        BlockOutput,
    )
    assert reply.hidden == [1] and reply.block == 2
    # 6 + 6 samples started passes: the budget of 12 is spent.
    with pytest.raises(MessageError, match="budget"):
        owner.forward(provider.forward, IMAGES, LABELS, batch_id="b")


def test_blocks_never_revealed_in_training_are_read_as_hidden():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 2, 4))
    x[:, 1] = 0.0  # block 1 was hidden in every training batch
    y = rng.integers(0, 2, 64)
    model = AdaptedClassifier(3, 4, 2, rank=2)
    train(model, x, y, TrainConfig(epochs=2))
    assert model.seen_blocks.tolist() == [True, False, True]
    shown = x.copy()
    shown[:, 1] = rng.normal(size=shown[:, 1].shape)  # revealed at inference only
    with torch.no_grad():
        a = model(torch.as_tensor(shown, dtype=torch.float32))
        b = model(torch.as_tensor(x, dtype=torch.float32))
    torch.testing.assert_close(a, b)


def test_the_provider_reports_progress_within_each_encrypted_block(student, small_params):
    stages: list[tuple[str, int, str]] = []
    blocks_served: list[int] = []
    provider = Provider(
        student,
        mode="execute",
        parameters=small_params,
        rng=random.Random(5),
        on_stage=lambda batch, block, stage: stages.append((batch, block, stage)),
        on_block=lambda event: blocks_served.append(event.block),
    )
    owner = DataOwner("clinic", allow_insecure=True)
    connect(provider, owner)
    owner.forward(provider.forward, IMAGES, LABELS)
    heads, width = student.config.heads, student.config.width
    parts = -(-student.config.mlp // width)
    want = ["group 1/1", "normalisation"]
    want += [f"attention head {h}/{heads}" for h in range(1, heads + 1)]
    want += [f"MLP part {p}/{parts}" for p in range(1, parts + 1)]
    # Every block served reported its stages, in order, under the block's own index.
    served = sorted(set(blocks_served))
    assert served == list(range(len(student.blocks)))
    for block in served:
        assert [s for _, b, s in stages if b == block][: len(want)] == want
    assert len(stages) == len(want) * len(blocks_served)

    # A progress callback that raises stops the evaluation with a clear error.
    def interrupt(batch: str, block: int, stage: str) -> None:
        raise RuntimeError("stop here")

    provider = Provider(student, mode="execute", parameters=small_params, on_stage=interrupt)
    owner = DataOwner("clinic", allow_insecure=True)
    connect(provider, owner)
    with pytest.raises(ValueError, match=r"progress callback failed.*stop here"):
        owner.forward(provider.forward, IMAGES, LABELS)


def test_an_owner_refuses_hostile_offers_with_clear_errors(student, small_params):
    provider = Provider(student, mode="execute", parameters=small_params)
    offer = decode(provider.offer(), Offer)
    # Insecure parameters only where the owner allows them (tests).
    with pytest.raises(MessageError, match="128-bit"):
        DataOwner().hello(offer.to_bytes())
    owner = DataOwner(allow_insecure=True)
    good = offer.to_bytes()
    head_len = int.from_bytes(good[6:10], "little")
    header = json.loads(good[10 : 10 + head_len])

    def with_header(h: dict, replace: tuple[str, str] = ("", "")) -> bytes:
        head = json.dumps(h).replace(*replace).encode()
        return good[:6] + len(head).to_bytes(4, "little") + head + good[10 + head_len :]

    hostile = {
        "a blob named in the header": with_header({**header, "embedding": "x"}),
        "a deeply nested header": with_header(
            {**header, "window": "deep"}, ('"deep"', "[" * 30_000 + "]" * 30_000)
        ),
        "an integer of 5,000 digits": with_header(
            {**header, "blocks": "big"}, ('"big"', "9" * 5000)
        ),
        "too many rotation steps": with_header({**header, "rotation_steps": list(range(1, 600))}),
        "a corrupted embedding": Offer(**{**offer.__dict__, "embedding": b"PK\x03\x04junk"}),
        "an embedding of another shape": Offer(**{**offer.__dict__, "width": offer.width + 1}),
    }
    for what, data in hostile.items():
        data = data.to_bytes() if isinstance(data, Offer) else data
        with pytest.raises(MessageError):
            owner.hello(data)
        assert owner._offer is None, what  # nothing was kept from a refused offer
    # A parameter blob naming 510 primes at 2^17 is refused at once, before anything is built.
    blob = bytearray(small_params.to_bytes()[:18])
    blob[8], blob[16], blob[17] = 17, 255, 255
    blob += b"".join((((i + 1) << 18) + 1).to_bytes(8, "little") for i in range(510))
    with pytest.raises(ValueError, match="510 primes"):
        ckks.Parameters.from_bytes(bytes(blob))
