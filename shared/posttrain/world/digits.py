"""The vision world of Lab 06: scikit-learn's bundled handwritten digits, corrupted at test time.

The 1 797 8×8 images (Alpaydin & Kaynak's UCI optical digits, shipped inside scikit-learn, so nothing is
downloaded) are split 1 200 / 597 by a seeded permutation. ``DigitsCNN`` is a small CNN with two batch norms and two
heads on one encoder: the digit class and, for test-time training with a pretext task (Sun et al. 2020,
arXiv:1909.13231), the image's rotation; ``train_digits_cnn`` trains both jointly in seconds on a CPU. ``corrupt``
applies the shifts the model meets at test time, in the style of Hendrycks & Dietterich's ImageNet-C
(arXiv:1903.12261): Gaussian noise, blur, lowered contrast and a brightness shift, at severities 1 to 5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

CORRUPTIONS = ("noise", "blur", "contrast", "brightness")
SEVERITIES = (1, 2, 3, 4, 5)
# Per severity 1..5: the noise's standard deviation, the blur's Gaussian sigma (pixels), the share of contrast kept
# and the brightness added, on images scaled to [0, 1].
_LEVELS = {
    "noise": (0.1, 0.2, 0.3, 0.45, 0.6),
    "blur": (0.5, 0.75, 1.0, 1.25, 1.5),
    "contrast": (0.6, 0.45, 0.3, 0.2, 0.1),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
}


@dataclass(frozen=True)
class Digits:
    """Images (n, 1, 8, 8) in [0, 1] and their labels (n,), for training and for test."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits(seed: int = 0, n_train: int = 1200) -> Digits:
    """scikit-learn's digits, pixel values 0-16 scaled to [0, 1], split by a permutation drawn from ``seed``."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    return Digits(images[train], labels[train], images[test], labels[test])


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius 2) with replicate padding."""
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")
    horizontal = nn.functional.conv2d(padded, kernel.view(1, 1, 1, 5))
    return nn.functional.conv2d(horizontal, kernel.view(1, 1, 5, 1))


def corrupt(images: torch.Tensor, corruption: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (n, 1, H, W) in [0, 1] under ``corruption`` (one of ``CORRUPTIONS``) at ``severity`` 1-5, clipped
    to [0, 1]; the noise is drawn from ``seed``. Contrast pulls every pixel toward the image's mean; brightness adds
    a constant, so a black background turns grey."""
    if corruption not in _LEVELS:
        raise ValueError(f"unknown corruption {corruption!r}; choose one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    level = _LEVELS[corruption][severity - 1]
    if corruption == "noise":
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
        out = images + level * noise
    elif corruption == "blur":
        out = _gaussian_blur(images, level)
    elif corruption == "contrast":
        mean = images.mean(dim=(-2, -1), keepdim=True)
        out = mean + level * (images - mean)
    else:
        out = images + level
    return out.clamp(0.0, 1.0)


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions with batch norm and ReLU, a 2×2 max-pool, then two linear heads on the shared encoding:
    the digit (``classifier``) and the rotation (``rotation_head``, the pretext task of arXiv:1909.13231)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        features = 2 * width * 4 * 4
        self.classifier = nn.Linear(features, 10)
        self.rotation_head = nn.Linear(features, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The digit logits (n, 10)."""
        return self.classifier(self.encoder(images))


def train_digits_cnn(
    digits: Digits,
    seed: int = 0,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    extra_loss: Callable[[DigitsCNN, torch.Tensor], torch.Tensor] | None = None,
) -> DigitsCNN:
    """Train a ``DigitsCNN`` on the training split with Adam on the digit cross-entropy, plus ``extra_loss(model,
    images)`` of each batch when given: the rotation pretext loss (``methods.tta.pretext_loss``) makes it Sun et al.'s
    joint training (arXiv:1909.13231, eq. 2). Returns the model in eval mode."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    images, labels = digits.train_images, digits.train_labels
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            if extra_loss is not None:
                loss = loss + extra_loss(model, images[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose arg-max is the label."""
    return float((logits.argmax(-1) == labels).float().mean())
