"""The FHE-friendly transformer block, evaluated on CKKS ciphertexts by the model provider.

Activations of shape (batch, tokens, width) are packed token-wise: ciphertext f of a group
holds feature f of every token of ``samples_per_group`` samples, so linear layers need no
rotations and only attention mixes slots. :class:`PackedBatch` keeps that layout with the
ciphertexts. The block's softmax, normalisations and GELU are the families of a
:class:`blindfed.approx.StudentSpec` (the default student's unless given), calibrated on data;
:meth:`Block.forward` is the f64 reference, :meth:`Block.mirror` the same arithmetic as the
encrypted run on f64 vectors (``simulate`` mode), and :meth:`Block.evaluate` the encrypted
run. A block whose input its owner normalised in the clear (:func:`owner_normalise`) takes
it as ``x_hat`` and skips its first normalisation.

>>> import numpy as np
>>> from blindfed import ckks
>>> from blindfed.block import Block, PackedBatch, owner_normalise, random_weights
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(2, 4, 8))
>>> block = Block(random_weights(8, 16, seed=1), tokens=4, heads=2).calibrated(x)
>>> plan = block.plan()
>>> plan["log_n"], plan["depth"]["attention"] > 0
(14, True)
>>> np.allclose(block.mirror(x, params=plan["parameters"]), block.forward(x))
True
>>> x_hat = owner_normalise(x)
>>> np.allclose(block.mirror(x, params=plan["parameters"], x_hat=x_hat),
...             block.forward(x, normalised=True))
True
"""

from __future__ import annotations

import numpy as np

from blindfed._core import Block, PackedBatch, owner_normalise

__all__ = ["SHAPES", "Block", "PackedBatch", "owner_normalise", "random_weights"]

#: Block shapes used in benchmarks: tokens, width, heads, mlp.
SHAPES: dict[str, dict[str, int]] = {
    "small": {"tokens": 65, "width": 64, "heads": 4, "mlp": 128},
    "vit_tiny": {"tokens": 197, "width": 192, "heads": 3, "mlp": 768},
    "vit_base": {"tokens": 577, "width": 768, "heads": 12, "mlp": 3072},
    # DINOv2 ViT-S/14: at 112 px (64 patches and the class token, the student's resolution)
    # and at 224 px (256 patches).
    "dinov2_s_112": {"tokens": 65, "width": 384, "heads": 6, "mlp": 1536},
    "dinov2_s": {"tokens": 257, "width": 384, "heads": 6, "mlp": 1536},
}


def random_weights(width: int, mlp: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random block weights at the scale of a trained ViT (for tests and benchmarks).

    Matrices are shaped (out, in) like ``torch.nn.Linear.weight``; LayerNorm gains sit near 1.
    """
    rng = np.random.default_rng(seed)

    def mat(out: int, inp: int, gain: float = 1.0) -> np.ndarray:
        return rng.normal(0.0, gain / np.sqrt(inp), size=(out, inp))

    def vec(n: int, center: float = 0.0, spread: float = 0.05) -> np.ndarray:
        return center + rng.normal(0.0, spread, size=n)

    return {
        "ln1_gamma": vec(width, 1.0),
        "ln1_beta": vec(width),
        # Query and key gains of 0.5 keep attention logits within a few units, as in a student
        # distilled with polynomial softmax (wide logits would need a deep 1/x).
        "wq": mat(width, width, 0.5),
        "bq": vec(width),
        "wk": mat(width, width, 0.5),
        "bk": vec(width),
        "wv": mat(width, width),
        "bv": vec(width),
        "wo": mat(width, width),
        "bo": vec(width),
        "ln2_gamma": vec(width, 1.0),
        "ln2_beta": vec(width),
        "w1": mat(mlp, width),
        "b1": vec(mlp),
        "w2": mat(width, mlp),
        "b2": vec(width),
    }
