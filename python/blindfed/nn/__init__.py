"""PyTorch side of blindfed: polynomial-approximation modules, the ViT and its FHE-friendly student.

Needs ``torch`` (``pip install blindfed[torch]``); the rest of blindfed does not.
"""

from blindfed.nn.approx import PolyApprox, PolyGELU, PolySoftmax, PowerApprox, native_eval
from blindfed.nn.norm import AffineNorm, PolyLayerNorm
from blindfed.nn.student import Student
from blindfed.nn.vit import ViT, ViTConfig

__all__ = [
    "AffineNorm",
    "PolyApprox",
    "PolyGELU",
    "PolyLayerNorm",
    "PolySoftmax",
    "PowerApprox",
    "Student",
    "ViT",
    "ViTConfig",
    "native_eval",
]
