"""A learned bottleneck at the split: the edge encodes z into a few quantised channels, the cloud
decodes them before its head, so an offload sends far fewer bytes than z (or the image).

* encoder (edge): a convolution from z's C channels to ``channels`` (kernel and stride
  ``stride``: 1 keeps z's resolution, 2 halves it), a sigmoid, and uniform quantisation to
  ``bits`` bits: 2**bits levels on [0, 1], sent as integers;
* decoder (cloud): the codes back to z's shape (a transposed convolution undoes the stride),
  a LeakyReLU and a 1x1 convolution to C channels, then the run's cloud head.

Training quantises with a straight-through estimator: the forward pass rounds, the backward pass
treats rounding as the identity. The bottleneck is fine-tuned on a trained run with the edge and
the local exit frozen (``stages.bottleneck``), so the local logits, the meta-data and every
router stay exactly what they were.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddnn_jax.core.codes import BITS
from ddnn_jax.core.models import DDNN, LEAKY_SLOPE, PRECISIONS, CloudCNN, torch_bias_init, torch_kernel_init
from ddnn_jax.core.seeds import seed_problem

STRIDES = (1, 2)
HIDDEN = 64  # channels of the decoder's hidden layer


@dataclasses.dataclass(frozen=True)
class BottleneckConfig:
    """One bottleneck and its fine-tuning."""

    channels: int = 2  # k, the codes' channels
    bits: int = 8  # per code value (BITS)
    stride: int = 1  # spatial reduction of z (STRIDES)
    epochs: int = 5  # of fine-tuning
    batch_size: int = 128
    learning_rate: float = 1e-3  # Adam
    seed: int = 0

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        if self.channels < 1:
            raise ValueError(f"--channels must be at least 1, got {self.channels}")
        if self.bits not in BITS:
            raise ValueError(f"--bits must be one of {', '.join(map(str, BITS))}, got {self.bits}")
        if self.stride not in STRIDES:
            raise ValueError(f"--stride must be one of {', '.join(map(str, STRIDES))}, got {self.stride}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if (problem := seed_problem("--seed", self.seed)) is not None:
            raise ValueError(problem)

    @property
    def name(self) -> str:
        """Its directory under RUN_DIR/bottlenecks/."""
        return f"k{self.channels}-b{self.bits}-s{self.stride}"

    def code_shape(self, z_shape: Sequence[int]) -> tuple[int, int, int]:
        """(h, w, k) of one sample's codes for z of shape (H, W, C)."""
        h, w, _ = z_shape
        return (math.ceil(h / self.stride), math.ceil(w / self.stride), self.channels)

    def payload_bytes(self, z_shape: Sequence[int]) -> int:
        """Bytes of one sample's codes, packed ``bits`` to a value."""
        return math.ceil(math.prod(self.code_shape(z_shape)) * self.bits / 8)


def cloud_like(model: DDNN) -> CloudCNN:
    """A cloud head of the same architecture as ``model``'s (its variables fit either)."""
    return CloudCNN(
        model.num_classes,
        conv_channels=model.cloud_conv_channels,
        dense_features=model.cloud_dense_features,
        dropout_rate=model.dropout_rate,
        conv=model.conv,
        dtype=PRECISIONS[model.precision],
    )


def quantize(u: jax.Array, bits: int) -> jax.Array:
    """u in [0, 1] rounded to 2**bits levels; its gradient is the identity's (straight-through)."""
    levels = 2**bits - 1
    rounded = jnp.round(u * levels) / levels
    return u + jax.lax.stop_gradient(rounded - u)


def to_codes(u: jax.Array, bits: int) -> jax.Array:
    """The integers 0 .. 2**bits - 1 that ``quantize(u)`` stands for, as uint8."""
    return jnp.round(u * (2**bits - 1)).astype(jnp.uint8)


def from_codes(codes: jax.Array, bits: int) -> jax.Array:
    """The float32 values in [0, 1] of integer codes (``to_codes``'s inverse on its image)."""
    return codes.astype(jnp.float32) / (2**bits - 1)


def _conv(features: int, in_features: int, kernel: int, name: str, transpose: bool = False):
    layer = nn.ConvTranspose if transpose else nn.Conv
    return layer(
        features,
        (kernel, kernel),
        strides=(kernel, kernel),
        padding="VALID",
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features * kernel * kernel),
        name=name,
    )


class Encoder(nn.Module):
    """z [N, H, W, C] -> values in [0, 1] of the codes [N, ceil(H/s), ceil(W/s), k], rounded to
    ``bits`` bits (straight-through)."""

    channels: int
    bits: int
    stride: int = 1

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        pad = [(0, 0), (0, -z.shape[1] % self.stride), (0, -z.shape[2] % self.stride), (0, 0)]
        z = jnp.pad(z, pad)
        u = nn.sigmoid(_conv(self.channels, z.shape[-1], self.stride, "encode")(z))
        return quantize(u, self.bits)


class Decoder(nn.Module):
    """Code values [N, h, w, k] -> z's shape [N, H, W, C]."""

    z_shape: Sequence[int]

    @nn.compact
    def __call__(self, codes: jax.Array) -> jax.Array:
        height, width, channels = self.z_shape
        stride = math.ceil(height / codes.shape[1])
        x = _conv(HIDDEN, codes.shape[-1], stride, "expand", transpose=stride > 1)(codes)
        x = nn.leaky_relu(x[:, :height, :width], LEAKY_SLOPE)
        return _conv(channels, HIDDEN, 1, "project")(x)


class BottleneckedCloud(nn.Module):
    """The cloud side behind a bottleneck: encoder (run on the edge), decoder and cloud head.
    ``__call__`` maps z to cloud logits; ``encode`` and ``decode_head`` split it at the wire."""

    config: BottleneckConfig
    z_shape: Sequence[int]
    cloud: CloudCNN

    def setup(self):
        self.encoder = Encoder(self.config.channels, self.config.bits, self.config.stride)
        self.decoder = Decoder(tuple(self.z_shape))

    def encode(self, z: jax.Array) -> jax.Array:
        return self.encoder(z)

    def decode_head(self, values: jax.Array, train: bool = False) -> jax.Array:
        return self.cloud(self.decoder(values), train).astype(jnp.float32)

    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        return self.decode_head(self.encode(z), train)
