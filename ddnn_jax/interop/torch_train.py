"""The reference training step in PyTorch, for side-by-side throughput measurements.

Same model, loss, optimizer and augmentation as ``ddnn_jax.train``: random crop of the
zero-padded uint8 batch and horizontal flip, per-channel normalisation, w*CE_local +
(1-w)*CE_cloud, Adam. Data stays in memory as tensors, as a tuned PyTorch loop would hold it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ddnn_jax.interop.reference import ReferenceDDNN


class TorchTrainer:
    def __init__(
        self,
        image_shape,
        num_classes: int,
        *,
        mean,
        std,
        crop_padding: int,
        horizontal_flip: bool = True,
        local_weight: float = 0.5,
        seed: int = 0,
    ):
        torch.manual_seed(seed)
        self.model = ReferenceDDNN(tuple(image_shape), num_classes).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad, self.flip, self.w = crop_padding, horizontal_flip, local_weight
        self.generator = torch.Generator().manual_seed(seed)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> random crops of the padded batch, optionally flipped, as float."""
        n, _, h, w = images.shape
        p = self.pad
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=self.generator)
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=self.generator)
        rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
        cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
        if self.flip:
            flipped = torch.rand(n, 1, 1, generator=self.generator) < 0.5
            cols = torch.where(flipped, cols.flip(-1), cols)
        batch = torch.arange(n).view(n, 1, 1).expand(n, h, w)
        crops = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        return (crops.float() / 255.0 - self.mean) / self.std

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the loss without waiting for it."""
        x = self.augment(images)
        local, cloud = self.model(x)
        loss = self.w * F.cross_entropy(local, labels) + (1 - self.w) * F.cross_entropy(cloud, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss
