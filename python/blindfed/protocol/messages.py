"""Typed, versioned messages between a data owner and the provider, as bytes on the wire.

Every message is an envelope: magic ``BFMG``, version, kind, a JSON header of plain fields
(at most 64 KiB) and binary blobs (ciphertexts, parameters, keys), each length-prefixed.
:func:`decode` validates the envelope, the kind, every field's type and every size before
anything is built from it, and raises :class:`MessageError` (a ``ValueError``) otherwise: a
malformed message from the network changes no state. The encoding is canonical: whatever
:func:`decode` accepts re-encodes to exactly the same bytes.

>>> msg = ForwardRequest(session="s1", batch="b0", block=0, windows=[2, 1], payload=b"...")
>>> decode(msg.to_bytes()) == msg
True
>>> decode(b"BFMG junk")
Traceback (most recent call last):
...
blindfed.protocol.messages.MessageError: message: truncated envelope
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "MAX_BLOB",
    "BlockOutput",
    "ForwardRequest",
    "Message",
    "MessageError",
    "Offer",
    "OwnerHello",
    "decode",
]

MAGIC = b"BFMG"
VERSION = 2
MAX_HEADER = 64 * 1024
#: Largest blob accepted (keys for a 2^16 ring with many rotations stay well below).
MAX_BLOB = 4 * 1024**3
#: Most rotation steps an offer may ask keys for: each costs the owner a key-switching key
#: (a block needs a few dozen; the cap bounds what a hostile offer can make an owner build).
MAX_ROTATION_STEPS = 512


class MessageError(ValueError):
    """A message that is malformed, of the wrong kind, or out of bounds."""


@dataclass
class Message:
    """Base: subclasses list their plain fields (JSON) and blob fields (bytes)."""

    KIND: ClassVar[int] = 0
    BLOBS: ClassVar[tuple[str, ...]] = ()

    def _header(self) -> bytes:
        """The JSON header: the plain fields in declaration order, no spaces (canonical)."""
        header = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.BLOBS}
        return json.dumps(header, separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        head = self._header()
        if len(head) > MAX_HEADER:
            raise MessageError(f"{type(self).__name__}: header of {len(head)} bytes is too large")
        parts = [MAGIC, struct.pack("<BBI", VERSION, self.KIND, len(head)), head]
        for name in self.BLOBS:
            blob = bytes(getattr(self, name))
            parts += [struct.pack("<Q", len(blob)), blob]
        return b"".join(parts)

    @classmethod
    def _check(cls, header: dict[str, Any]) -> None:
        """Field types; subclasses add range checks."""
        for f in fields(cls):
            if f.name in cls.BLOBS:
                continue
            if f.name not in header:
                raise MessageError(f"{cls.__name__}: missing field {f.name!r}")
            want = {
                "str": str,
                "int": int,
                "float": (int, float),
                "bool": bool,
                "list[int]": list,
                "list[int] | None": (list, type(None)),
            }.get(str(f.type))
            value = header[f.name]
            if want is not None and (
                not isinstance(value, want)
                or (want in (int, (int, float)) and isinstance(value, bool))
            ):
                raise MessageError(
                    f"{cls.__name__}: field {f.name!r} has type {type(value).__name__}"
                )
            if isinstance(value, list) and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise MessageError(f"{cls.__name__}: field {f.name!r} must be a list of integers")
        # A blob's name in the header is unknown there too: blobs travel only as blobs.
        extra = set(header) - {f.name for f in fields(cls) if f.name not in cls.BLOBS}
        if extra:
            raise MessageError(f"{cls.__name__}: unknown fields {sorted(extra)}")


@dataclass
class Offer(Message):
    """Provider -> owner: what to generate keys for and how to encode inputs.

    ``embedding`` is the student's patch embedding (``.npz`` bytes), shared so the owner can
    encrypt token embeddings; it is the only part of the model an owner receives. With
    ``owner_norm`` the owner also sends the first block input of each request normalised in
    the clear, ``(x - mean) / sqrt(var + eps)`` per token.
    """

    KIND: ClassVar[int] = 1
    BLOBS: ClassVar[tuple[str, ...]] = ("parameters", "embedding")
    session: str
    mode: str
    blocks: int
    tokens: int
    width: int
    window: int
    flood_bits: int
    rotation_steps: list[int]
    owner_norm: bool = False
    eps: float = 1e-6
    parameters: bytes = b""
    embedding: bytes = b""

    @classmethod
    def _check(cls, header: dict[str, Any]) -> None:
        super()._check(header)
        if header["mode"] not in ("execute", "simulate"):
            raise MessageError(f"Offer: unknown mode {header['mode']!r}")
        for name in ("blocks", "tokens", "width", "window"):
            if not 1 <= header[name] <= 1 << 20:
                raise MessageError(f"Offer: {name} = {header[name]} is out of range")
        if not 0 <= header["eps"] <= 1:
            raise MessageError(f"Offer: eps = {header['eps']} is out of range")
        if not 0 <= header["flood_bits"] <= 64:
            raise MessageError(f"Offer: flood_bits = {header['flood_bits']} is out of range")
        steps = header["rotation_steps"]
        if len(steps) > MAX_ROTATION_STEPS or any(abs(k) >= 1 << 20 for k in steps):
            raise MessageError(
                f"Offer: {len(steps)} rotation steps (at most {MAX_ROTATION_STEPS}, each below "
                "2^20 in size)"
            )


@dataclass
class OwnerHello(Message):
    """Owner -> provider: its public evaluation keys (public, relinearisation, rotations)."""

    KIND: ClassVar[int] = 2
    BLOBS: ClassVar[tuple[str, ...]] = ("keys",)
    session: str
    owner: str
    keys: bytes = b""


@dataclass
class ForwardRequest(Message):
    """Owner -> provider: inputs of ``block`` for a batch (a packed encrypted batch in
    ``execute`` mode, a float64 ``.npy`` array in ``simulate`` mode). ``windows`` splits the
    batch into runs of consecutive samples the provider may permute among themselves
    (lengths summing to the batch size). ``normalized``, when the offer asked for it, holds the
    same inputs normalised by the owner, encoded the same way (empty otherwise)."""

    KIND: ClassVar[int] = 3
    BLOBS: ClassVar[tuple[str, ...]] = ("payload", "normalized")
    session: str
    batch: str
    block: int
    windows: list[int] = field(default_factory=list)
    payload: bytes = b""
    normalized: bytes = b""

    @classmethod
    def _check(cls, header: dict[str, Any]) -> None:
        super()._check(header)
        if header["block"] < 0 or any(w < 1 for w in header["windows"]):
            raise MessageError("ForwardRequest: negative block or empty window")


@dataclass
class BlockOutput(Message):
    """Provider -> owner: the sanitised output of revealed ``block``; ``hidden`` lists the
    blocks evaluated before it whose outputs the owner never sees; ``relative`` is the
    permutation since the owner's previous revealed output (output sample p was sample
    ``relative[p]`` of the request), absent for the first one of a batch."""

    KIND: ClassVar[int] = 4
    BLOBS: ClassVar[tuple[str, ...]] = ("payload",)
    session: str
    batch: str
    block: int
    hidden: list[int]
    relative: list[int] | None
    payload: bytes = b""


_KINDS: dict[int, type[Message]] = {
    m.KIND: m for m in (Offer, OwnerHello, ForwardRequest, BlockOutput)
}


def decode(data: bytes, expect: type[Message] | None = None) -> Any:
    """Parses and validates a message (of kind ``expect`` if given)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a message is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 10 or data[:4] != MAGIC:
        raise MessageError(
            "message: truncated envelope" if data[:4] == MAGIC else "message: bad magic"
        )
    version, kind, head_len = struct.unpack_from("<BBI", data, 4)
    if version != VERSION:
        raise MessageError(f"message: unsupported version {version}")
    cls = _KINDS.get(kind)
    if cls is None:
        raise MessageError(f"message: unknown kind {kind}")
    if expect is not None and cls is not expect:
        raise MessageError(f"message: got {cls.__name__} where {expect.__name__} was expected")
    if head_len > MAX_HEADER or 10 + head_len > len(data):
        raise MessageError(f"{cls.__name__}: header length {head_len} is out of bounds")
    try:
        header = json.loads(data[10 : 10 + head_len])
    except RecursionError:
        raise MessageError(f"{cls.__name__}: header is nested too deeply") from None
    except ValueError as e:  # not UTF-8, not JSON, or an integer of thousands of digits
        raise MessageError(f"{cls.__name__}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise MessageError(f"{cls.__name__}: header is not an object")
    cls._check(header)
    pos = 10 + head_len
    blobs = {}
    for name in cls.BLOBS:
        if pos + 8 > len(data):
            raise MessageError(f"{cls.__name__}: truncated before {name!r}")
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        if n > MAX_BLOB or pos + n > len(data):
            raise MessageError(f"{cls.__name__}: {name!r} of {n} bytes is out of bounds")
        blobs[name] = data[pos : pos + n]
        pos += n
    if pos != len(data):
        raise MessageError(f"{cls.__name__}: {len(data) - pos} trailing bytes")
    msg = cls(**header, **blobs)
    # One encoding per message: a header with other spacing, order or number spellings is
    # refused, so whatever is accepted re-encodes to exactly the bytes that came.
    if msg._header() != data[10 : 10 + head_len]:
        raise MessageError(f"{cls.__name__}: header is not in canonical form")
    return msg
