"""The logits and a compact view of z (family ``logits-hybrid``, the thesis's proposal of richer
router inputs at a price an edge can pay): z's channels averaged over the feature map, c values
(32 for the thesis's network), appended to the local logits. The edge computes z anyway; the
extra cost is h*w*c additions for the pooling and 2*c*width FLOPs in the router's first layer
(``router_net.router_flops`` counts them)."""

from __future__ import annotations

import numpy as np


def pooled_features(features: np.ndarray) -> np.ndarray:
    """[N, h, w, c] feature maps -> [N, c] their spatial means, float32."""
    return np.asarray(features, np.float32).mean(axis=(1, 2))


def pooling_flops(feature_shape: tuple[int, ...]) -> int:
    """Additions (and one scaling per channel) the pooling costs per sample."""
    h, w, c = feature_shape
    return h * w * c
