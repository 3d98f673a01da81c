"""Secure aggregation through the bindings: a round with a dropout, and the error types."""

import numpy as np
import pytest

from blindfed import _core
from blindfed._core import (
    FixedPointOverflowError,
    MalformedDataError,
    SecAggError,
    SecAggOwner,
    SecAggParams,
    SecAggServer,
    TamperedShareError,
)

IDS = [101, 202, 303, 404, 505]


def make_params(**kw) -> SecAggParams:
    args = {"neighbours": None, "context": b"run-7/round-3"} | kw
    return SecAggParams(IDS, 3, 16, 4.0, **args)


def fixed_sum(vectors, frac_bits=20):
    """The exact sum of the fixed-point encodings, as floats."""
    return sum(np.round(v * 2.0**frac_bits).astype(np.int64) for v in vectors) / 2.0**frac_bits


def to_route(params, seed=0):
    owners = {
        i: SecAggOwner(params, i, seed=(seed + i).to_bytes(32, "little")) for i in params.owners
    }
    server = SecAggServer(params)
    roster = server.roster({i: o.advertise() for i, o in owners.items()})
    inboxes = server.route({i: o.share(roster) for i, o in owners.items()})
    return owners, server, inboxes


def test_a_round_with_a_dropout_returns_the_survivors_exact_sum():
    wire = make_params(neighbours=4).to_bytes()
    params = SecAggParams.from_bytes(wire)
    assert params == make_params(neighbours=4)
    assert params.owners == IDS and params.threshold == 3 and params.neighbours == 4
    assert params.context == b"run-7/round-3"
    rng = np.random.default_rng(5)
    values = {i: rng.uniform(-4.0, 4.0, 16) for i in IDS}
    owners, server, inboxes = to_route(params)
    assert server.stage == "collect"
    masked = {i: owners[i].mask(inboxes[i], values[i]) for i in IDS if i != 303}
    request = server.collect(masked)
    assert server.survivors == [101, 202, 404, 505] and server.dropped == [303]
    answers = {i: owners[i].unmask(request) for i in server.survivors}
    total = server.aggregate(answers)
    assert server.stage == "done"
    assert total.dtype == np.float64 and total.shape == (16,)
    expected = fixed_sum(values[i] for i in server.survivors)
    np.testing.assert_array_equal(total, expected)
    np.testing.assert_allclose(total, sum(values[i] for i in server.survivors), atol=1e-5)


def test_exceptions_are_value_errors_in_a_hierarchy():
    assert issubclass(_core.SecAggError, ValueError)
    assert issubclass(TamperedShareError, SecAggError)
    assert issubclass(FixedPointOverflowError, SecAggError)


def test_invalid_parameters_name_the_numbers():
    with pytest.raises(SecAggError, match=r"threshold 6 .* at most neighbours \+ 1 = 5"):
        SecAggParams(IDS, 6, 4, 1.0)
    with pytest.raises(SecAggError, match="odd"):
        SecAggParams(IDS, 2, 4, 1.0, neighbours=3)
    with pytest.raises(SecAggError, match=r"2\^31"):
        SecAggParams(IDS, 3, 4, 1024.0, ring_bits=32)
    with pytest.raises(MalformedDataError):
        SecAggParams.from_bytes(b"BFSA\x01\x01")


def test_overflow_and_tampering_raise_their_own_errors():
    params = make_params()
    owners, _, inboxes = to_route(params, seed=40)
    me = owners[101]
    bad = np.zeros(16)
    bad[7] = 4.5
    with pytest.raises(FixedPointOverflowError, match="index 7"):
        me.mask(inboxes[101], bad)
    bad[7] = np.nan
    with pytest.raises(FixedPointOverflowError, match="index 7"):
        me.mask(inboxes[101], bad)
    tampered = bytearray(inboxes[101])
    tampered[-3] ^= 0x40  # inside the last ciphertext, from the highest sender id
    with pytest.raises(TamperedShareError, match="owner 505"):
        me.mask(bytes(tampered), np.zeros(16))
    with pytest.raises(MalformedDataError):
        me.mask(inboxes[101][:-1], np.zeros(16))
    with pytest.raises(SecAggError, match="15 values"):
        me.mask(inboxes[101], np.zeros(15))
    assert me.stage == "mask"
    me.mask(inboxes[101], np.zeros(16))
    assert me.stage == "unmask"


def test_misuse_is_refused():
    params = make_params()
    owner = SecAggOwner(params, 101)
    with pytest.raises(SecAggError, match="next step is advertise"):
        owner.share(b"")
    with pytest.raises(SecAggError, match="not an owner"):
        SecAggOwner(params, 999)
    owners, server, inboxes = to_route(params, seed=80)
    # Owner 202's bundle under 101's identity is a forgery.
    fresh = {i: SecAggOwner(params, i, seed=i.to_bytes(32, "little")) for i in IDS}
    s2 = SecAggServer(params)
    roster = s2.roster({i: o.advertise() for i, o in fresh.items()})
    bundles = {i: o.share(roster) for i, o in fresh.items()}
    bundles[101] = bundles[202]
    with pytest.raises(SecAggError, match="claims to come from owner 202"):
        s2.route(bundles)
    # The request is answered once; a request listing an owner twice is refused.
    masked = {i: owners[i].mask(inboxes[i], np.ones(16)) for i in IDS}
    request = server.collect(masked)
    with pytest.raises(SecAggError, match="refused"):
        server.collect(masked)
    answer = owners[101].unmask(request)
    with pytest.raises(SecAggError, match="already answered"):
        owners[101].unmask(request)
    with pytest.raises(SecAggError, match="lacks shares"):
        server.aggregate({101: answer})
    answers = {i: owners[i].unmask(request) for i in IDS if i != 101} | {101: answer}
    np.testing.assert_array_equal(server.aggregate(answers), np.full(16, 5.0))
