"""The online phase: provider and owner over bytes, in both modes, with privacy boosting."""

from __future__ import annotations

import pickle
import random
import warnings

import numpy as np
import pytest
import torch

from blindfed import ckks
from blindfed.block import PackedBatch
from blindfed.nn.adapter import AdaptedClassifier, TrainConfig, accuracy, train
from blindfed.nn.student import Student
from blindfed.nn.vit import ViT, ViTConfig
from blindfed.protocol import DataOwner, MessageError, Provider
from blindfed.protocol.messages import ForwardRequest, OwnerHello, decode


@pytest.fixture(scope="module")
def student() -> Student:
    torch.manual_seed(0)
    s = Student.from_teacher(
        ViT(ViTConfig(image_size=8, patch_size=4, width=8, depth=3, heads=2, mlp=16))
    )
    s.calibrate([torch.randn(64, 1, 8, 8)])
    return s


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
        owner = DataOwner("clinic")
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
