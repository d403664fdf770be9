"""Flax Linen modules of the distributed DNN: edge extractor, local head, cloud head.

Layer order, names and initialisation follow the authors' PyTorch implementation so that
weights can be ported and training dynamics compared:

* ``feature_extractor`` (edge): conv1 -> bn -> LeakyReLU -> MaxPool(2) -> Dropout
* ``local_classifier`` (edge): fc1 -> LeakyReLU -> fc2
* ``cloud`` (cloud, input z): four conv blocks (conv_i, bn_i) then fc1 -> fc2 -> fc3

Every Conv/Dense draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is what
PyTorch's default ``kaiming_uniform_(a=sqrt(5))`` and fan-in bias rule amount to. Batch norm
uses PyTorch's momentum 0.1 (Flax ``momentum=0.9``) and eps 1e-5. Input sizes are inferred, so
the same modules serve 28x28x1 and 32x32x3 images and any number of classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LEAKY_SLOPE = 0.01
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch
BN_EPSILON = 1e-5

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance_scaling's uniform limit is sqrt(3 * scale / fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """PyTorch's default bias initialiser for a layer with the given fan-in."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def im2col_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    precision=None,
    **unused,
):
    """Stride-1 NHWC x HWIO convolution as one matmul over the stacked shifted windows.

    A drop-in for ``lax.conv_general_dilated`` in ``nn.Conv`` on XLA:CPU. There, inside a
    compiled loop (our epoch's ``lax.scan``), the backward convolutions keep non-canonical
    dimension orders that XLA:CPU runs with a naive loop nest: the epoch ran about 10x slower
    than the same steps driven from Python. As a matmul, forward and backward are Eigen GEMMs in
    any context (``ddnn bench conv`` and ``ddnn bench train`` measure both).
    """
    del dimension_numbers, unused  # nn.Conv passes NHWC / HWIO
    dilations = (*(lhs_dilation or ()), *(rhs_dilation or ()))
    if any(s != 1 for s in window_strides) or any(d != 1 for d in dilations):
        raise NotImplementedError("im2col_conv supports stride 1 without dilation only")
    kh, kw, cin, cout = rhs.shape
    if padding == "SAME":
        padding = [((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)]
    elif padding == "VALID":
        padding = [(0, 0), (0, 0)]
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    windows = [x[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)]
    # (row, column, channel) order of the last axis = the row-major order of an HWIO kernel
    return jnp.dot(jnp.concatenate(windows, axis=-1), rhs.reshape(kh * kw * cin, cout), precision=precision)


CONV_CHOICES = ("auto", "im2col", "xla")
# Compute dtype of the layers; parameters, optimizer state and the loss stay float32 either way.
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def uses_im2col(conv: str) -> bool:
    """Whether the convolution choice runs ``im2col_conv``: 'auto' picks it on CPU, where XLA's
    own convolution is slow inside compiled loops, and XLA's convolution elsewhere. Every choice
    computes the same function."""
    if conv not in CONV_CHOICES:
        raise ValueError(f"conv must be one of {', '.join(CONV_CHOICES)}, got '{conv}'")
    return conv == "im2col" or (conv == "auto" and jax.default_backend() == "cpu")


def conv3x3(
    features: int, in_channels: int, name: str | None = None, *, conv: str = "auto", dtype: Any = None
) -> nn.Conv:
    """3x3, stride 1, SAME padding, PyTorch's default initialisation; ``dtype`` computes."""
    return nn.Conv(
        features,
        (3, 3),
        padding="SAME",
        dtype=dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_channels * 9),
        conv_general_dilated=im2col_conv if uses_im2col(conv) else None,
        name=name,
    )


def dense(features: int, in_features: int, name: str | None = None, dtype: Any = None) -> nn.Dense:
    """A Dense layer with PyTorch's default initialisation; ``dtype`` computes."""
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        name=name,
    )


def batch_norm(train: bool, name: str | None = None, dtype: Any = None) -> nn.BatchNorm:
    """Batch norm with PyTorch's momentum and epsilon and its exact variance E[(x - mean)^2]
    (its statistics in float32 whatever ``dtype`` computes)."""
    return nn.BatchNorm(
        use_running_average=not train,
        dtype=dtype,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        use_fast_variance=False,
        name=name,
    )


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, NHWC; odd trailing rows/columns are dropped as in PyTorch.

    Written as reshape + max: XLA on CPU runs this and its gradient faster than reduce_window.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _flatten_channels_first(x: jax.Array) -> jax.Array:
    """Flatten NHWC in PyTorch's NCHW order, so ported first-Dense weights keep their meaning."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class EdgeFeatureExtractor(nn.Module):
    """f_E: the edge's convolutional block; its output z is what would cross the network."""

    channels: int = 32
    dropout_rate: float = 0.2
    conv: str = "auto"  # see CONV_CHOICES
    dtype: Any = None  # compute dtype (None: the input's)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv3x3(self.channels, x.shape[-1], "conv1", conv=self.conv, dtype=self.dtype)(x)
        x = batch_norm(train, "bn", self.dtype)(x)
        x = nn.leaky_relu(x, LEAKY_SLOPE)
        x = max_pool_2x2(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class LocalClassifier(nn.Module):
    """g_L: the edge's small classifier on z."""

    num_classes: int
    hidden: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = _flatten_channels_first(z)
        x = nn.leaky_relu(dense(self.hidden, x.shape[-1], "fc1", self.dtype)(x), LEAKY_SLOPE)
        return dense(self.num_classes, self.hidden, "fc2", self.dtype)(x)


class CloudCNN(nn.Module):
    """g_R: the deeper cloud network on z.

    ``pool_after`` marks the conv blocks followed by 2x2 max pooling (default: blocks 1, 2, 4).
    """

    num_classes: int
    conv_channels: Sequence[int] = (64, 128, 256, 256)
    pool_after: Sequence[bool] = (True, True, False, True)
    dense_features: Sequence[int] = (256, 64)
    dropout_rate: float = 0.2
    conv: str = "auto"  # see CONV_CHOICES
    dtype: Any = None

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        x = z
        for i, (channels, pool) in enumerate(zip(self.conv_channels, self.pool_after, strict=False), start=1):
            x = conv3x3(channels, x.shape[-1], f"conv{i}", conv=self.conv, dtype=self.dtype)(x)
            x = batch_norm(train, f"bn{i}", self.dtype)(x)
            x = nn.leaky_relu(x, LEAKY_SLOPE)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            if pool:
                x = max_pool_2x2(x)
        x = _flatten_channels_first(x)
        for i, features in enumerate(self.dense_features, start=1):
            x = nn.leaky_relu(dense(features, x.shape[-1], f"fc{i}", self.dtype)(x), LEAKY_SLOPE)
        out_name = f"fc{len(self.dense_features) + 1}"
        return dense(self.num_classes, x.shape[-1], out_name, self.dtype)(x)


class DDNN(nn.Module):
    """The two-exit network. ``__call__`` returns (local_logits, cloud_logits, z).

    ``edge`` and ``cloud_head`` run the two halves on their own: ``edge`` reads only the
    ``feature_extractor`` and ``local_classifier`` variables, ``cloud_head`` only ``cloud``.

    ``precision`` 'bf16' computes every layer in bfloat16 (batch-norm statistics in float32);
    parameters are float32 and every output is float32, so the loss is computed in float32.
    """

    num_classes: int
    edge_channels: int = 32
    local_hidden: int = 64
    cloud_conv_channels: Sequence[int] = (64, 128, 256, 256)
    cloud_dense_features: Sequence[int] = (256, 64)
    dropout_rate: float = 0.2
    conv: str = "auto"  # the convolution implementation, see CONV_CHOICES
    precision: str = "fp32"  # a key of PRECISIONS

    def setup(self):
        dtype = PRECISIONS[self.precision]
        self.feature_extractor = EdgeFeatureExtractor(self.edge_channels, self.dropout_rate, self.conv, dtype)
        self.local_classifier = LocalClassifier(self.num_classes, self.local_hidden, dtype)
        self.cloud = CloudCNN(
            self.num_classes,
            conv_channels=self.cloud_conv_channels,
            dense_features=self.cloud_dense_features,
            dropout_rate=self.dropout_rate,
            conv=self.conv,
            dtype=dtype,
        )

    def edge(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Edge device: image -> (z, local_logits), float32."""
        z = self.feature_extractor(x, train)
        return z.astype(jnp.float32), self.local_classifier(z).astype(jnp.float32)

    def cloud_head(self, z: jax.Array, train: bool = False) -> jax.Array:
        """Cloud: z -> cloud_logits, float32."""
        return self.cloud(z, train).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool = False):
        z, local_logits = self.edge(x, train)
        return local_logits, self.cloud_head(z, train), z


def feature_shape(model: DDNN, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """(height, width, channels) of the edge features z that ``model`` makes of such images."""
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    z = jax.eval_shape(
        lambda v, x: model.apply(v, x, method=model.edge)[0], variables, jnp.zeros((1, *image_shape))
    )
    return tuple(int(d) for d in z.shape[1:])  # type: ignore[return-value]
