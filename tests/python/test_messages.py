"""The provider/owner envelope (blindfed.protocol.messages): mutated bytes get a MessageError."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from blindfed.protocol.messages import (
    BlockOutput,
    ForwardRequest,
    MessageError,
    Offer,
    OwnerHello,
    decode,
)

#: Mutations per message kind: a short run in CI, longer by hand
#: (``MESSAGE_FUZZ_CASES=300000 pytest tests/python/test_messages.py``).
CASES = int(os.environ.get("MESSAGE_FUZZ_CASES", "3000"))

MESSAGES = [
    Offer(
        session="s1",
        mode="execute",
        blocks=4,
        tokens=17,
        width=64,
        window=8,
        flood_bits=8,
        rotation_steps=[1, 2, -4],
        parameters=b"p" * 40,
        embedding=b"e" * 60,
    ),
    OwnerHello(session="s1", owner="clinic", keys=b"k" * 100),
    ForwardRequest(session="s1", batch="b0", block=1, windows=[2, 1], payload=b"x" * 50),
    BlockOutput(session="s1", batch="b0", block=3, hidden=[2], relative=[1, 0], payload=b"y" * 9),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_mutated_messages_decode_or_raise_a_message_error(message):
    good = message.to_bytes()
    assert decode(good, type(message)) == message
    rng = np.random.default_rng(0)
    accepted = 0
    for _ in range(CASES):
        bad = bytearray(good)
        kind = rng.integers(3)
        if kind == 0:  # flip bytes
            for i in rng.integers(0, len(bad), size=int(rng.integers(1, 4))):
                bad[i] ^= int(rng.integers(1, 256))
        elif kind == 1:  # cut
            bad = bad[: int(rng.integers(0, len(bad)))]
        else:  # insert
            at = int(rng.integers(0, len(bad)))
            bad[at:at] = rng.integers(
                0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8
            ).tobytes()
        try:
            decoded = decode(bytes(bad))
        except MessageError:
            continue
        # Whatever is accepted is a well-formed message of a known kind.
        accepted += 1
        assert type(decoded) in {type(m) for m in MESSAGES}
        assert decoded.to_bytes() == bytes(bad)
    assert accepted < CASES // 2


def test_headers_that_broke_the_decoder_get_message_errors():
    good = MESSAGES[2].to_bytes()
    head_len = int.from_bytes(good[6:10], "little")
    header = json.loads(good[10 : 10 + head_len])
    blobs = good[10 + head_len :]

    def envelope(head: str) -> bytes:
        raw = head.encode()
        return good[:6] + len(raw).to_bytes(4, "little") + raw + blobs

    cases = {
        "unknown fields": json.dumps({**header, "payload": "x"}),  # a blob named in the header
        "nested too deeply": json.dumps({**header, "windows": "D"}).replace(
            '"D"', "[" * 30_000 + "]" * 30_000
        ),
        "not JSON": json.dumps({**header, "block": "B"}).replace('"B"', "9" * 5000),
        "list of integers": json.dumps({**header, "windows": [[1]]}),
        "not an object": "[]",
        "canonical": json.dumps(header),  # spaces after the separators
    }
    for match, head in cases.items():
        with pytest.raises(MessageError, match=match):
            decode(envelope(head))
