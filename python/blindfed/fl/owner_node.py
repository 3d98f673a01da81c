"""A data owner's side of a federation, kept on its own disk.

Flower starts a new process for every message an owner answers, and an owner may crash or be
restarted between any two of them, so nothing lives in memory from one call to the next:

- ``key_seed`` (mode 0600): 32 CSPRNG bytes that expand to this session's CKKS secret key;
  ``offer.bin``: the provider's offer it was made for;
- ``passes/``: the block outputs of every batch (the online phase's cache, resumable);
- ``rounds/<r>/``: the round's contribution, the seed of its secure-aggregation secrets and
  the messages received so far; every stage replays the earlier ones from them (all of the
  owner's randomness in a round comes from that seed), and the seed is deleted once the
  owner has answered the unmasking request.

Every method takes and returns bytes or plain values, so any transport can carry them.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from blindfed import secagg
from blindfed.atomic import write_atomically
from blindfed.fl.owner_data import OwnerData, held_out
from blindfed.protocol import DataOwner

__all__ = ["OwnerNode"]

log = logging.getLogger("blindfed.fl")


def _shred(path: Path) -> None:
    """Overwrites then removes a secret file (best effort: file systems may keep copies)."""
    if path.exists():
        write_atomically(path, bytes(path.stat().st_size), private=True)
        path.unlink()


class OwnerNode:
    """One owner's federation state under ``directory``; ``data`` is its own data.

    Args:
        directory: the owner's private working directory (created if missing).
        data: its training and test images.
        name: how the provider's session knows it.
        allow_insecure: accept CKKS parameters below 128-bit security (tests only; see
            :class:`~blindfed.protocol.DataOwner`).
        holdout: ``(fraction, seed)`` to choose hyperparameters on outputs already computed:
            the rounds train on the rest of the training outputs and are scored on a seeded
            ``fraction`` of each label's (:func:`~blindfed.fl.owner_data.held_out`) instead
            of the test split, which is then never read (``blindfed tune --passes``).
    """

    def __init__(
        self,
        directory: str | Path,
        data: OwnerData,
        *,
        name: str = "owner",
        allow_insecure: bool = False,
        holdout: tuple[float, int] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.name = name
        self.allow_insecure = allow_insecure
        self.holdout = holdout
        self._owner: DataOwner | None = None
        # The head's input statistics, from this node's training outputs (kept while it lives).
        self._statistics: tuple[Any, Any] | None = None

    def reopened(self) -> OwnerNode:
        """The same owner as a new process sees it: only what is on its disk carries over."""
        return OwnerNode(
            self.directory,
            self.data,
            name=self.name,
            allow_insecure=self.allow_insecure,
            holdout=self.holdout,
        )

    # ---- the online phase -----------------------------------------------------------------

    def _data_owner(self) -> DataOwner:
        return DataOwner(
            self.name, cache_dir=self.directory / "passes", allow_insecure=self.allow_insecure
        )

    def hello(self, offer: bytes) -> bytes:
        """Joins a new provider session: a new key seed, the public keys in reply."""
        seed = secrets.token_bytes(32)
        owner = self._data_owner()
        hello = owner.hello(offer, key_seed=seed)
        write_atomically(self.directory / "key_seed", seed, private=True)
        write_atomically(self.directory / "offer.bin", offer, private=True)
        self._owner = owner
        self._statistics = None  # a new session's passes give new outputs
        return hello

    def owner(self) -> DataOwner:
        """The online-phase owner of the current session (restored from disk if needed)."""
        if self._owner is None:
            offer, seed = self.directory / "offer.bin", self.directory / "key_seed"
            if not offer.exists():
                raise RuntimeError("this owner has not joined a provider session yet")
            owner = self._data_owner()
            owner.restore(offer.read_bytes(), seed.read_bytes() if seed.exists() else None)
            self._owner = owner
        return self._owner

    def batches(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The batches the owner sends, one ciphertext group each: its training images with
        their labels (so the provider may permute within labels), then its test images
        labelled -1 (to infer: their order is kept), so that training and test images share
        groups (a group costs the same however few samples it holds)."""
        group = self.owner().samples_per_group
        d = self.data
        images = np.concatenate([d.train_images, d.test_images])
        labels = np.concatenate(
            [np.asarray(d.train_labels, dtype=np.int64), np.full(len(d.test_labels), -1)]
        )
        return [
            (f"batch-{i // group}", images[i : i + group], labels[i : i + group])
            for i in range(0, len(labels), group)
        ]

    def ready(self) -> bool:
        """Whether every batch has been through every block (so no session is needed)."""
        if not (self.directory / "offer.bin").exists():
            return False
        owner = self.owner()
        return all(owner.begin_pass(x, y, batch_id=b).done for b, x, y in self.batches())

    def pass_step(self, reply: bytes | None) -> bytes | None:
        """Feeds the provider's reply to the last request (if any) and returns the next
        request, moving on from batch to batch; None once every batch is through."""
        owner = self.owner()
        pending = [
            p
            for p in (owner.begin_pass(x, y, batch_id=b) for b, x, y in self.batches())
            if not p.done
        ]
        if reply:
            if not pending:
                raise ValueError("a reply arrived but no pass is waiting for one")
            pending[0].accept(reply)
            if pending[0].done:
                pending.pop(0)
        return pending[0].request() if pending else None

    def refresh(self, request: bytes) -> bytes:
        return self.owner().answer_refresh(request)

    def refused(self, reason: str) -> None:
        """The provider left this owner out of the online phase: the reason is logged and
        kept in ``refused.txt`` (the owner's operator reads it; the next session retries)."""
        log.error("owner %s: %s", self.name, reason)
        (self.directory / "refused.txt").write_text(reason + "\n")

    def outputs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The block outputs (samples, blocks, tokens, width) and labels of a split (the test
        split in the order of ``data.test_images``; with :attr:`holdout`, the training
        outputs split into the part trained on and the held-out part)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        owner = self.owner()
        parts = [owner.begin_pass(x, y, batch_id=b).result() for b, x, y in self.batches()]
        x = np.concatenate([p.outputs for p in parts])
        y = np.concatenate([p.labels for p in parts])
        if self.holdout is not None:
            x, y = x[y >= 0], y[y >= 0]
            held = held_out(y, self.holdout[0], seed=self.holdout[1])
            keep = ~held if split == "train" else held
            return x[keep], y[keep]
        # Unlabelled (test) samples sort first within each batch and keep their order.
        keep = y >= 0 if split == "train" else y < 0
        if not keep.any():
            raise ValueError(f"no {split} data")
        if split == "train":
            return x[keep], y[keep]
        return x[keep], self.data.test_labels

    # ---- a round of federated training ----------------------------------------------------

    def _round(self, round: int, attempt: int = 0) -> Path:
        """A round's state; a retried round (``attempt`` > 0) starts a new secure aggregation
        and keeps it apart."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        path = self.directory / "rounds" / (str(round) if attempt == 0 else f"{round}.{attempt}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fit(
        self,
        round: int,
        me: int,
        model_vector: np.ndarray,
        config: dict[str, Any],
        secagg_params: bytes,
        *,
        attempt: int = 0,
    ) -> bytes:
        """Trains the global model locally, keeps the contribution on disk and returns the
        first secure-aggregation message (its public keys)."""
        from blindfed.fl.fedavg import LocalTraining, contribution, local_update, set_vector

        path = self._round(round, attempt)
        digest = hashlib.sha256(np.ascontiguousarray(model_vector, dtype=np.float64)).hexdigest()
        done = path / "contribution.npy"
        if not done.exists() or (path / "model.sha256").read_text() != digest:
            x, y = self.outputs("train")
            model = self._model(config, x)
            set_vector(model, model_vector)
            delta = local_update(
                model,
                x,
                y,
                float(config["lr"]),
                LocalTraining(**config.get("local", {})),
                seed=round,
            )
            seen = np.abs(x).max(axis=(0, 2, 3)) > 0
            np.save(done, contribution(delta, seen, len(y)))
            (path / "model.sha256").write_text(digest)
            for stale in ("roster.bin", "inbox.bin", "unmask.bin"):
                (path / stale).unlink(missing_ok=True)
        write_atomically(path / "params.bin", secagg_params, private=True)
        (path / "me").write_text(str(me))
        seed = path / "seed"
        if not seed.exists():
            write_atomically(seed, secrets.token_bytes(32), private=True)
        return self._secagg(path, "advertise")[1]

    def _secagg(self, path: Path, upto: str) -> tuple[secagg.Owner, bytes]:
        """The round's secure-aggregation owner, replayed from disk up to (not including)
        stage ``upto``, and its advert."""
        if not (path / "seed").exists():
            raise RuntimeError(f"round {path.name}: no secure-aggregation state (already done?)")
        params = secagg.Params.from_bytes((path / "params.bin").read_bytes())
        agg = secagg.Owner(
            params, int((path / "me").read_text()), seed=(path / "seed").read_bytes()
        )
        advert = agg.advertise()
        if upto in ("mask", "unmask"):
            agg.share((path / "roster.bin").read_bytes())
        if upto == "unmask":
            agg.mask((path / "inbox.bin").read_bytes(), np.load(path / "contribution.npy"))
        return agg, advert

    def _record(self, path: Path, name: str, message: bytes) -> None:
        """Keeps a received message for replays; a different one for the same stage is refused
        (the aggregator may not ask twice with other sets)."""
        stored = path / name
        if stored.exists() and stored.read_bytes() != message:
            raise ValueError(f"round {path.name}: a second, different {name[:-4]} message")
        stored.write_bytes(message)

    def share(self, round: int, roster: bytes, *, attempt: int = 0) -> bytes:
        path = self._round(round, attempt)
        agg, _ = self._secagg(path, "share")
        self._record(path, "roster.bin", roster)
        return agg.share(roster)

    def mask(self, round: int, inbox: bytes, *, attempt: int = 0) -> bytes:
        path = self._round(round, attempt)
        agg, _ = self._secagg(path, "mask")
        self._record(path, "inbox.bin", inbox)
        return agg.mask(inbox, np.load(path / "contribution.npy"))

    def unmask(self, round: int, request: bytes, *, attempt: int = 0) -> bytes:
        path = self._round(round, attempt)
        agg, _ = self._secagg(path, "unmask")
        self._record(path, "unmask.bin", request)
        answer = agg.unmask(request)
        # The round's secrets are no longer needed: nothing can ask for more shares.
        _shred(path / "seed")
        for name in ("roster.bin", "inbox.bin"):
            (path / name).unlink(missing_ok=True)
        return answer

    def evaluate(self, model_vector: np.ndarray, config: dict[str, Any]) -> tuple[int, int]:
        """Correct predictions and test samples of the global model on this owner's test
        data (the outputs of its inference passes)."""
        from blindfed.fl.fedavg import set_vector
        from blindfed.nn.adapter import accuracy

        x, y = self.outputs("test")
        model = self._model(config)
        set_vector(model, model_vector)
        return round(accuracy(model, x, y) * len(y) / 100), len(y)

    def _model(self, config: dict[str, Any], train: np.ndarray | None = None) -> Any:
        """The round's model; with ``config["standardise"]``, standardising its inputs by
        the statistics of this owner's training outputs (``train`` if given; they never
        leave the node)."""
        from blindfed.fl.fedavg import make_model
        from blindfed.nn.adapter import standardisation

        offer = self.owner()._require_offer()
        model = make_model(
            offer.blocks,
            offer.width,
            int(config["classes"]),
            int(config["rank"]),
            str(config["readout"]),
            bool(config["standardise"]),
        )
        if model.standardise:
            if self._statistics is None:
                self._statistics = standardisation(
                    self.outputs("train")[0] if train is None else train
                )
            model.standardise_by(*self._statistics)
        return model

    def forget(self) -> None:
        """Deletes everything this owner keeps for the federation (keys, outputs, rounds)."""
        _shred(self.directory / "key_seed")
        shutil.rmtree(self.directory, ignore_errors=True)
        self._statistics = None
