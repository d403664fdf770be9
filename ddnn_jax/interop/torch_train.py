"""The reference training step in PyTorch: the step of the torch training backend
(:mod:`ddnn_jax.interop.torch_backend`) and the contender of the throughput benchmarks.

Same model, loss, optimizer and augmentation as ``ddnn_jax.core.training``: random crop of the
zero-padded uint8 batch and horizontal flip, per-channel normalisation, w*CE_local +
(1-w)*CE_cloud with a fixed w or one drawn per step, Adam. Data stays in memory as tensors on the
trainer's device, as a tuned PyTorch loop would hold it. Every random number (initialisation,
augmentation, dropout, a per-step w) comes from torch's global generator.

The step runs eagerly, or compiled whole by ``torch.compile`` (augmentation, forward, loss,
backward and the Adam update; Dynamo splits the function at ``backward()``, AOTAutograd compiles
the backward graph and the optimizer step is its own graph). ``compile_mode="reduce-overhead"``
replays each graph as a CUDA graph, so every call first marks a new step: the previous step's
outputs, loss included, may then be overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from ddnn_jax.interop.reference import ReferenceDDNN

# torch.compile modes the trainer knows: None is eager
COMPILE_MODES = (None, "default", "reduce-overhead")


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
        local_weight: float | None = 0.5,
        seed: int = 0,
        device: str | torch.device = "cpu",
        compile_mode: str | None = None,
        learning_rate: float = 1e-3,
        architecture: Mapping[str, Any] | None = None,
    ):
        """``local_weight`` None draws w ~ U(0, 1) at every step; ``architecture`` holds
        ReferenceDDNN's keyword arguments (widths, dropout rate), its defaults when None."""
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        # one global seed: a torch.Generator argument would split the compiled graph
        torch.manual_seed(seed)
        self.device = torch.device(device)
        model = ReferenceDDNN(tuple(image_shape), num_classes, **(architecture or {}))
        self.model = model.to(self.device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.pad, self.flip, self.w = crop_padding, horizontal_flip, local_weight
        self.compile_mode = compile_mode
        self._step = self._update
        if compile_mode is not None:
            # one fixed shape per trainer: kernels specialised to it, as a tuned loop would have
            self._step = torch.compile(self._update, mode=compile_mode, dynamic=False)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> random crops of the padded batch, optionally flipped, as float."""
        n, _, h, w = images.shape
        p, device = self.pad, images.device
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1), device=device)
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1), device=device)
        rows = (torch.arange(h, device=device).view(1, h, 1) + dy).expand(n, h, w)
        cols = (torch.arange(w, device=device).view(1, 1, w) + dx).expand(n, h, w)
        if self.flip:
            flipped = torch.rand(n, 1, 1, device=device) < 0.5
            cols = torch.where(flipped, cols.flip(-1), cols)
        batch = torch.arange(n, device=device).view(n, 1, 1).expand(n, h, w)
        crops = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        return (crops.float() / 255.0 - self.mean) / self.std

    def _update(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Augment, forward, loss, backward and Adam update: the function that is compiled.
        Returns [loss, correct local, correct cloud] as one float tensor."""
        local, cloud = self.model(self.augment(images))
        w = torch.rand((), device=images.device) if self.w is None else self.w
        loss = w * F.cross_entropy(local, labels) + (1 - w) * F.cross_entropy(cloud, labels)
        loss.backward()
        self.optimizer.step()
        # after the update, so that no gradient outlives the step (CUDA graphs reuse their memory)
        self.optimizer.zero_grad(set_to_none=True)
        correct = [(logits.argmax(-1) == labels).sum() for logits in (local, cloud)]
        return torch.stack([loss.detach(), *(c.float() for c in correct)])

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch already on the device; returns [loss, correct local,
        correct cloud] without waiting."""
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        return self._step(images, labels)
