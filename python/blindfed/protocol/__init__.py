"""The online phase: the provider and data owners, and the messages between them.

In process, an owner talks to a provider through two calls: ``provider.offer()`` /
``owner.hello(offer)`` / ``provider.register(hello)`` once, then ``owner.forward(
provider.forward, images, labels)`` per batch; every argument that crosses is bytes.

>>> import numpy as np, torch
>>> from blindfed.nn.vit import ViT, ViTConfig
>>> from blindfed.nn.student import Student
>>> from blindfed.protocol import DataOwner, Provider
>>> _ = torch.manual_seed(0)
>>> config = ViTConfig(image_size=8, patch_size=4, width=8, depth=3, heads=2, mlp=16)
>>> student = Student.from_teacher(ViT(config))
>>> _ = student.calibrate([torch.randn(64, 1, 8, 8)])
>>> provider = Provider(student, mode="simulate")
>>> owner = DataOwner("clinic")
>>> provider.register(owner.hello(provider.offer()))
>>> out = owner.forward(provider.forward, np.random.rand(6, 1, 8, 8), np.array([0, 1, 0, 1, 2, 2]))
>>> out.outputs.shape, bool(out.revealed[-1])
((6, 3, 5, 8), True)
"""

from blindfed.protocol.messages import MessageError
from blindfed.protocol.owner import BlockOutputs, DataOwner
from blindfed.protocol.provider import BlockEvent, Provider

__all__ = ["BlockEvent", "BlockOutputs", "DataOwner", "MessageError", "Provider"]
