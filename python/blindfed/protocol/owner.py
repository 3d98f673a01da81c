"""The data owner: holds its data, its CKKS secret key, its adapters and head.

The owner encrypts token embeddings of its images, sends them block by block to the
provider, decrypts each revealed block output, caches it on disk (in a canonical sample
order it can chain with the provider's relative permutations) and re-encrypts it for the
next block. A batch interrupted half-way resumes from its last cached block.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blindfed import ckks
from blindfed._core import answer_refresh
from blindfed.atomic import write_atomically
from blindfed.block import PackedBatch, owner_normalise
from blindfed.protocol.evaluation import load_simulated, save_simulated
from blindfed.protocol.messages import (
    BlockOutput,
    ForwardRequest,
    MessageError,
    Offer,
    OwnerHello,
    decode,
)
from blindfed.protocol.permutation import label_windows

__all__ = ["BlockOutputs", "DataOwner", "Pass"]

#: provider.forward: (request bytes, refresh callable) -> reply bytes.
Forward = Callable[[bytes, Callable[[bytes], bytes]], bytes]


@dataclass
class BlockOutputs:
    """Decrypted block outputs of a batch in the owner's canonical order.

    ``outputs[:, l]`` is (batch, tokens, width), zeros where block l was hidden; ``revealed[l]``
    says which; ``labels`` are aligned with the samples (None at inference); ``windows`` are
    the runs of samples the provider was allowed to permute (ones at inference).
    """

    outputs: np.ndarray
    revealed: np.ndarray
    labels: np.ndarray | None
    windows: list[int]


class DataOwner:
    """The owner side of the online phase.

    Args:
        name: how the provider knows this owner.
        cache_dir: where block outputs are cached (resume after an interruption); None keeps
            them in memory only.
        allow_insecure: accept CKKS parameters below 128-bit security (small test sets).
            Off by default: a dishonest provider could otherwise offer a ring in which the
            owner's ciphertexts do not protect its data.
    """

    def __init__(
        self,
        name: str = "owner",
        *,
        cache_dir: str | Path | None = None,
        allow_insecure: bool = False,
    ) -> None:
        self.name = name
        self.allow_insecure = allow_insecure
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._offer: Offer | None = None
        self._group = 0
        self._secret: ckks.SecretKey | None = None
        self._embedding: dict[str, np.ndarray] = {}
        self._passes: dict[str, Pass] = {}
        self.sent_bytes = 0
        self.received_bytes = 0

    # ---- handshake ------------------------------------------------------------------------

    def hello(self, offer: bytes, *, key_seed: bytes | None = None) -> bytes:
        """Generates this owner's keys for the offered parameters; returns the public part.

        ``key_seed`` (32 secret bytes from a CSPRNG) makes the secret key reproducible, so an
        owner whose processes come and go can :meth:`restore` it (see ``blindfed.fl``).
        """
        msg = self._accept_offer(offer, key_seed)
        keys = b""
        if self._secret is not None:
            keys = self._secret.evaluation_keys(
                rotations=msg.rotation_steps, conjugate=True
            ).to_bytes()
        return OwnerHello(session=msg.session, owner=self.name, keys=keys).to_bytes()

    def restore(self, offer: bytes, key_seed: bytes | None) -> None:
        """Rejoins a session this owner already said :meth:`hello` to (in another process):
        the same offer and key seed give the same secret key; no keys are sent again."""
        self._accept_offer(offer, key_seed)

    def _accept_offer(self, offer: bytes, key_seed: bytes | None) -> Offer:
        msg = decode(offer, Offer)
        embedding = _load_embedding(msg)
        params = ckks.Parameters.from_bytes(msg.parameters)
        group = params.samples_per_group(msg.tokens)
        secret = None
        if msg.mode == "execute":
            if not params.is_secure and not self.allow_insecure:
                raise MessageError(
                    f"Offer: the parameters ({params}) are below 128-bit security; an owner "
                    "accepts them only for tests (DataOwner(allow_insecure=True))"
                )
            secret = ckks.SecretKey.generate(params, seed=key_seed)
        self._offer, self._embedding, self._secret = msg, embedding, secret
        self._group = group
        return msg

    @property
    def mode(self) -> str:
        return self._require_offer().mode

    @property
    def samples_per_group(self) -> int:
        """Samples one ciphertext group holds in the offered parameters: a batch this size
        costs the provider one group per block, whether full or not."""
        self._require_offer()
        return self._group

    def _require_offer(self) -> Offer:
        if self._offer is None:
            raise RuntimeError("call hello() with the provider's offer first")
        return self._offer

    def answer_refresh(self, request: bytes) -> bytes:
        """Decrypts masked (noise-like) values and re-encrypts them: the owner's half of a
        masked refresh. It never sees the hidden block's output."""
        if self._secret is None:
            raise RuntimeError("no keys: call hello() first (execute mode)")
        self.received_bytes += len(request)
        reply = answer_refresh(self._secret, request)
        self.sent_bytes += len(reply)
        return reply

    # ---- encoding -------------------------------------------------------------------------

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Images (batch, channels, h, w) to token embeddings (batch, tokens, width)."""
        e = self._embedding
        if not e:
            raise RuntimeError("call hello() with the provider's offer first")
        images = np.asarray(images, dtype=np.float64)
        weight, p = e["weight"], int(e["patch_size"])
        if images.ndim != 4 or images.shape[1] != weight.shape[1] or images.shape[2] % p:
            raise ValueError(
                f"expected images (batch, {weight.shape[1]}, h, w) with h, w multiples of {p}, "
                f"got {images.shape}"
            )
        n, c, h, w = images.shape
        patches = images.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(n, (h // p) * (w // p), c * p * p)
        tokens = patches @ weight.reshape(weight.shape[0], -1).T + e["bias"]
        cls = np.broadcast_to(e["cls_token"][0], (n, 1, tokens.shape[2]))
        out = np.concatenate([cls, tokens], axis=1) + e["pos_embed"]
        if out.shape[1] != self._require_offer().tokens:
            raise ValueError(
                f"images give {out.shape[1]} tokens, the model takes {self._offer.tokens}"
            )
        return out

    def _encode(self, x: np.ndarray) -> bytes:
        if self.mode == "execute":
            return PackedBatch.encrypt(self._secret, np.ascontiguousarray(x)).to_bytes()
        return save_simulated(x)

    def _decode(self, payload: bytes) -> np.ndarray:
        if self.mode == "execute":
            batch = PackedBatch.from_bytes(self._secret.parameters, payload)
            return batch.decrypt(self._secret)
        return load_simulated(payload)

    # ---- the block-wise forward pass ------------------------------------------------------

    def forward(
        self,
        forward: Forward,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        batch_id: str = "batch",
        cache: bool = True,
    ) -> BlockOutputs:
        """Runs one batch through every block (resuming from the cache if interrupted).

        With labels the samples are sorted by label and the provider may permute within runs
        of equal labels; without (inference) the provider keeps the order. A negative label
        marks a sample to infer within a training batch (its place is kept too), so training
        and test images can share one ciphertext group. The cache (when
        the owner has a ``cache_dir`` and ``cache`` is true) is keyed by ``batch_id`` and
        fingerprinted by the inputs: other images under the same name start afresh.
        """
        step = self.begin_pass(images, labels, batch_id=batch_id, cache=cache)
        while (request := step.request()) is not None:
            step.accept(
                forward(request, self.answer_refresh if self.mode == "execute" else _no_refresh)
            )
        return step.result()

    def begin_pass(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        batch_id: str = "batch",
        cache: bool = True,
    ) -> Pass:
        """The pass of one batch as steps, for transports where the provider calls the owner
        (Flower): ``request()`` gives the next block's request (None when done),
        ``accept(reply)`` takes the provider's answer. The same batch id and inputs give back
        the pass in progress: from memory, or from the cache in a new process."""
        images = np.asarray(images, dtype=np.float64)
        fingerprint = _fingerprint(images, labels)
        current = self._passes.get(batch_id)
        if current is not None and current.fingerprint == fingerprint:
            return current
        step = Pass(self, images, labels, batch_id, fingerprint, cache)
        self._passes[batch_id] = step
        return step

    def classify(
        self,
        forward: Forward,
        images: np.ndarray,
        model: Callable[[Any], Any],
    ) -> np.ndarray:
        """Predicted classes of new images: the encrypted forward pass, then the owner's
        adapters and head (e.g. a trained :class:`~blindfed.nn.adapter.AdaptedClassifier`).

        Nothing is cached and the order of ``images`` is kept.
        """
        import torch

        out = self.forward(
            forward, images, batch_id=f"classify-{secrets.token_hex(4)}", cache=False
        )
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        with torch.no_grad():
            logits = model(torch.as_tensor(out.outputs, dtype=torch.float32))
        if was_training:
            model.train()
        return logits.argmax(1).numpy()

    # ---- cache ----------------------------------------------------------------------------

    def _cache(self, batch_id: str) -> Path:
        assert self.cache_dir is not None
        path = self.cache_dir / batch_id
        path.mkdir(parents=True, exist_ok=True)
        return path


class Pass:
    """One batch's way through the blocks; made by :meth:`DataOwner.begin_pass`."""

    def __init__(
        self,
        owner: DataOwner,
        images: np.ndarray,
        labels: np.ndarray | None,
        batch_id: str,
        fingerprint: str,
        cache: bool,
    ) -> None:
        offer = owner._require_offer()
        n = len(images)
        self._owner, self.batch_id, self.fingerprint = owner, batch_id, fingerprint
        self._store = owner.cache_dir is not None and cache
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise ValueError(f"expected {n} labels, got shape {labels.shape}")
            order = np.argsort(labels, kind="stable")
            images, labels = images[order], labels[order]
            self.windows = label_windows(labels.tolist(), offer.window, owner.samples_per_group)
        else:
            self.windows = [1] * n
        self._images, self.labels = images, labels
        self._outputs = np.zeros((offer.blocks, n, offer.tokens, offer.width))
        self._revealed = np.zeros(offer.blocks, dtype=bool)
        # canonical[p]: the canonical index of the sample now at position p.
        self._canonical: np.ndarray | None = None
        self._next_block = 0
        state = self._load_state() if self._store else None
        if state is not None:
            self._canonical = np.asarray(state["canonical"])
            for index in state["revealed"]:
                self._outputs[index] = np.load(owner._cache(batch_id) / f"block_{index}.npy")
                self._revealed[index] = True
            self._next_block = state["next_block"]

    @property
    def done(self) -> bool:
        return self._next_block >= len(self._revealed)

    def request(self) -> bytes | None:
        """The request for the next block, or None when every block has been through."""
        if self.done:
            return None
        owner, offer = self._owner, self._owner._require_offer()
        if self._canonical is None:
            x = owner.embed(self._images)
        else:
            # From the last revealed output, in the order the provider last returned.
            x = self._outputs[np.flatnonzero(self._revealed)[-1]][self._canonical]
        request = ForwardRequest(
            session=offer.session,
            batch=self.batch_id,
            block=self._next_block,
            windows=self.windows,
            payload=owner._encode(x),
            # The owner holds this input in the clear: normalising it reveals nothing new.
            normalized=owner._encode(owner_normalise(x, offer.eps)) if offer.owner_norm else b"",
        ).to_bytes()
        owner.sent_bytes += len(request)
        return request

    def accept(self, reply_bytes: bytes) -> None:
        """Takes the provider's reply to the last request."""
        owner, offer = self._owner, self._owner._require_offer()
        n = len(self._images)
        owner.received_bytes += len(reply_bytes)
        reply = decode(reply_bytes, BlockOutput)
        if self.done or reply.batch != self.batch_id or reply.block < self._next_block:
            raise ValueError(f"reply for {reply.batch!r} block {reply.block} was not asked for")
        x = owner._decode(reply.payload)
        if x.shape != (n, offer.tokens, offer.width):
            raise ValueError(
                f"reply holds shape {x.shape}, expected {(n, offer.tokens, offer.width)}"
            )
        if self._canonical is None:
            canonical = np.arange(n)
        else:
            relative = np.asarray(reply.relative)
            if sorted(relative.tolist()) != list(range(n)):
                raise ValueError("the relative permutation is not a permutation of the batch")
            canonical = self._canonical[relative]
        aligned = np.empty_like(x)
        aligned[canonical] = x
        self._canonical = canonical
        self._outputs[reply.block] = aligned
        self._revealed[reply.block] = True
        self._next_block = reply.block + 1
        if self._store:
            self._save_state(reply.block, aligned)

    def result(self) -> BlockOutputs:
        """The decrypted outputs in canonical order (labels are unchanged by permutations
        within equal-label windows)."""
        if not self.done:
            raise RuntimeError(f"pass {self.batch_id!r} stopped before block {self._next_block}")
        self._owner._passes.pop(self.batch_id, None)
        return BlockOutputs(
            self._outputs.transpose(1, 0, 2, 3).copy(),
            self._revealed.copy(),
            self.labels,
            self.windows,
        )

    def _load_state(self) -> dict[str, Any] | None:
        path = self._owner._cache(self.batch_id) / "state.json"
        if not path.exists():
            return None
        # A new session (new keys, a restarted provider) resumes too: the cache is plaintext.
        try:
            state = json.loads(path.read_text())
        except ValueError:
            warnings.warn(
                f"unreadable cache state for {self.batch_id!r}: starting afresh", stacklevel=4
            )
            return None
        if state.get("fingerprint") != self.fingerprint:
            warnings.warn(
                f"the cache of {self.batch_id!r} holds other inputs: starting afresh", stacklevel=4
            )
            return None
        return state

    def _save_state(self, block: int, aligned: np.ndarray) -> None:
        path = self._owner._cache(self.batch_id)
        write_atomically(path / f"block_{block}.npy", lambda f: np.save(f, aligned))
        state = {
            "session": self._owner._require_offer().session,
            "fingerprint": self.fingerprint,
            "next_block": self._next_block,
            "revealed": [int(i) for i in np.flatnonzero(self._revealed)],
            "canonical": self._canonical.tolist(),
        }
        write_atomically(path / "state.json", lambda f: f.write(json.dumps(state).encode()))


_EMBEDDING = ("weight", "bias", "cls_token", "pos_embed", "patch_size")


def _load_embedding(offer: Offer) -> dict[str, np.ndarray]:
    """The offer's patch embedding, checked against the offer's shape: stored (uncompressed)
    ``.npz`` members only, so nothing decoded is larger than the bytes that came."""
    blob = offer.embedding
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(blob):
                    raise MessageError(f"Offer: embedding member {info.filename!r} is packed")
            held = sorted(name.removesuffix(".npy") for name in archive.namelist())
            if held != sorted(_EMBEDDING) or len(set(archive.namelist())) != len(held):
                raise MessageError(f"Offer: embedding holds {held}, not {_EMBEDDING}")
            e = {}
            for k in _EMBEDDING:
                with archive.open(f"{k}.npy") as member:
                    e[k] = np.lib.format.read_array(member, allow_pickle=False)
    except MessageError:
        raise
    except Exception as ex:  # zipfile and numpy raise many types on bad bytes
        raise MessageError(f"Offer: embedding is not an .npz archive ({ex})") from None
    weight, width, tokens = e["weight"], offer.width, offer.tokens
    patch = e["patch_size"]
    ok = (
        patch.shape == ()
        and np.issubdtype(patch.dtype, np.integer)
        and weight.ndim == 4
        and weight.shape[0] == width
        and weight.shape[2:] == (int(patch), int(patch))
        and e["bias"].shape == (width,)
        and e["cls_token"].shape == (1, 1, width)
        and e["pos_embed"].shape == (1, tokens, width)
        and all(
            e[k].dtype == np.float64 and np.isfinite(e[k]).all()
            for k in ("weight", "bias", "cls_token", "pos_embed")
        )
    )
    if not ok:
        shapes = {k: (v.shape, str(v.dtype)) for k, v in e.items()}
        raise MessageError(
            f"Offer: embedding {shapes} does not fit {tokens} tokens of width {width}"
        )
    return e


def _fingerprint(images: np.ndarray, labels: np.ndarray | None) -> str:
    h = hashlib.sha256(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes())
    return h.hexdigest()


def _no_refresh(request: bytes) -> bytes:
    raise RuntimeError("simulate mode has no refreshes")
