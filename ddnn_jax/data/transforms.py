"""The array functions of the input pipeline: per-channel statistics on the host, normalisation
and augmentation as jittable code run on device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def channel_statistics(x: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``x * scale`` per entry of the last axis (a channel of NHWC images, a
    feature of a router's inputs), accumulated in float64; the std is floored at 1e-6 so that
    a constant input standardises to zeros."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64) * scale
    std = x.std(axis=axes, dtype=np.float64) * scale
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """uint8 NHWC -> float32, scaled to [0, 1] then standardised per channel."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(images: jax.Array, rng: jax.Array, *, horizontal_flip: bool, pad: int) -> jax.Array:
    """Random crop of the zero-padded raw NHWC batch, then an optional random horizontal flip.

    Runs before ``normalize``: padding is black pixels, as torchvision's RandomCrop pads.
    """
    n, h, w, _ = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    images = jax.vmap(crop)(padded, offsets)
    if horizontal_flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
        images = jnp.where(flip, images[:, :, ::-1, :], images)
    return images
