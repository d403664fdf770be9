"""The SPEC architecture in PyTorch, with the module and parameter names of the authors' code.

Three modules, one state dict each, as the reference implementation saves them:
``LocalFeatureExtractor{conv1, bn}``, ``LocalClassifier{fc1, fc2}`` and
``CloudCNN{conv1..convK, bn1..bnK, fc1..fcM}``. Layer order matches ``ddnn_jax.core.models``; PyTorch's
default initialisation and batch-norm settings are what the Flax model reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LEAKY_SLOPE = 0.01
CLOUD_POOL_AFTER = (True, True, False, True)


class LocalFeatureExtractor(nn.Module):
    def __init__(self, in_channels: int, channels: int = 32, dropout_rate: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.leaky_relu(self.bn(self.conv1(x)), LEAKY_SLOPE), 2)
        return self.dropout(x)


class LocalClassifier(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.leaky_relu(self.fc1(torch.flatten(z, 1)), LEAKY_SLOPE))


class CloudCNN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        in_size: tuple[int, int],
        num_classes: int,
        conv_channels: Sequence[int] = (64, 128, 256, 256),
        dense_features: Sequence[int] = (256, 64),
        dropout_rate: float = 0.2,
    ):
        super().__init__()
        if len(conv_channels) != len(CLOUD_POOL_AFTER):
            raise ValueError(
                f"the cloud has {len(CLOUD_POOL_AFTER)} conv blocks, got {len(conv_channels)} widths"
            )
        height, width = in_size
        channels = in_channels
        for i, out in enumerate(conv_channels, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(channels, out, 3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(out))
            channels = out
            if CLOUD_POOL_AFTER[i - 1]:
                height, width = height // 2, width // 2
        features = channels * height * width
        for i, out in enumerate((*dense_features, num_classes), start=1):
            setattr(self, f"fc{i}", nn.Linear(features, out))
            features = out
        self.num_convs, self.num_dense = len(conv_channels), len(dense_features) + 1
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        for i in range(1, self.num_convs + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            x = self.dropout(F.leaky_relu(x, LEAKY_SLOPE))
            if CLOUD_POOL_AFTER[i - 1]:
                x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        for i in range(1, self.num_dense):
            x = F.leaky_relu(getattr(self, f"fc{i}")(x), LEAKY_SLOPE)
        return getattr(self, f"fc{self.num_dense}")(x)


class ReferenceDDNN(nn.Module):
    """The two-exit network on NCHW float images: ``forward`` returns (local, cloud) logits."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        edge_channels: int = 32,
        local_hidden: int = 64,
        cloud_conv_channels: Sequence[int] = (64, 128, 256, 256),
        cloud_dense_features: Sequence[int] = (256, 64),
        dropout_rate: float = 0.2,
    ):
        super().__init__()
        height, width, in_channels = image_shape
        z_size = (height // 2, width // 2)
        self.feature_extractor = LocalFeatureExtractor(in_channels, edge_channels, dropout_rate)
        self.local_classifier = LocalClassifier(
            edge_channels * z_size[0] * z_size[1], num_classes, local_hidden
        )
        self.cloud = CloudCNN(
            edge_channels, z_size, num_classes, cloud_conv_channels, cloud_dense_features, dropout_rate
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.feature_extractor(x)
        return self.local_classifier(z), self.cloud(z)
