"""What the edge sends for the samples it offloads, and where: its features z in a feature wire,
a learned bottleneck's codes of z, or the image itself in an image wire (``deploy.wire``).

An ``Uplink`` is fixed before the first sample: the wire, the server's route, the header's param
(a bottleneck's bits, a lossy format's quality), what one sample of the batch is made of, and
the in-process cloud logits the live answers are checked against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.deploy import image_wire, wire
from ddnn_jax.deploy.client import check_route
from ddnn_jax.deploy.edge_half import EdgeInputs
from ddnn_jax.rundir.bottlenecks import DeployedBottleneck, deployed_bottleneck, read_bottleneck_logits

DEFAULT_QUALITY = image_wire.DEFAULT_QUALITY


class Uplink(NamedTuple):
    """How offloaded samples travel."""

    wire: str
    path: str  # the server's route
    param: int  # the header's: a bottleneck's bits, a lossy format's quality, else 0
    make: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (images, z) of the offloaded -> the batch
    bottleneck: DeployedBottleneck | None

    def body(self, images: np.ndarray, z: np.ndarray) -> bytes:
        """The request body of offloaded samples, from their images and edge features."""
        return wire.encode(self.make(images, z), self.wire, self.param)

    @property
    def label(self) -> str:
        """The wire and what sets it apart: 'int8', 'jpeg q75', 'bottleneck k2-b4-s1'."""
        if self.bottleneck is not None:
            return f"{self.wire} {self.bottleneck.name}"
        return f"{self.wire} q{self.param}" if self.wire in image_wire.LOSSY else self.wire


def check_quality(quality: int) -> None:
    low, high = image_wire.QUALITY_RANGE
    if not low <= quality <= high:
        raise UsageError(f"--quality must lie in {low}..{high}, got {quality}")


def build_uplink(
    inputs: EdgeInputs,
    wire_name: str,
    *,
    bottleneck: str | None = None,
    quality: int | None = DEFAULT_QUALITY,
    batch: int = 1,
) -> Uplink:
    """The uplink of ``wire_name`` for the run of ``inputs``; ``batch`` the most samples a
    request holds (a bottleneck's encoder is compiled for that size once).

    Raises:
      UsageError: an unknown wire, a quality out of range, no such bottleneck (or several and
        none named).
    """
    if wire_name not in wire.WIRES:
        raise UsageError(f"--wire must be one of {', '.join(wire.WIRES)}, got '{wire_name}'")
    kind = wire.WIRES[wire_name].kind
    if kind == wire.FEATURES:
        return Uplink(wire_name, wire.CLOUD_PATH, 0, lambda images, z: z, None)
    if kind == wire.IMAGES:
        param = 0
        if wire_name in image_wire.LOSSY:
            param = DEFAULT_QUALITY if quality is None else quality
            check_quality(param)
        return Uplink(wire_name, wire.IMAGE_PATH, param, lambda images, z: images, None)
    deployed = deployed_bottleneck(inputs.run, _bottleneck_name(inputs, bottleneck))
    encode = jax.jit(deployed.codes)

    def make(images: np.ndarray, z: np.ndarray) -> np.ndarray:
        padded = np.zeros((batch, *z.shape[1:]), np.float32)  # one compiled size for every request
        padded[: len(z)] = z
        return np.asarray(encode(deployed.variables, padded))[: len(z)]

    return Uplink(wire_name, wire.codes_path(deployed.name), deployed.bits, make, deployed)


def _bottleneck_name(inputs: EdgeInputs, name: str | None) -> str:
    if name is not None:
        return name
    have = list(inputs.run.bottlenecks())
    if len(have) != 1:
        listed = ", ".join(have) or "none: run 'ddnn bottleneck' first"
        raise UsageError(f"name the bottleneck to send codes of with --bottleneck (the run has {listed})")
    return have[0]


def reference_cloud_logits(inputs: EdgeInputs, uplink: Uplink) -> np.ndarray:
    """The cloud's logits of the evaluated samples in process, as this uplink's answers should
    be: the bottleneck's on its codes, the plain cloud's otherwise (a lossy image may differ)."""
    if uplink.bottleneck is None:
        return inputs.reference.cloud_logits
    n = len(inputs.images)
    if inputs.test_split:
        return read_bottleneck_logits(inputs.run.bottleneck(uplink.bottleneck.name))["test"][:n]
    deployed = uplink.bottleneck
    z = inputs.reference.features
    assert z is not None  # a folder's reference keeps its features
    codes = deployed.codes(deployed.variables, z)
    return np.asarray(jax.jit(deployed.logits_of_codes)(deployed.variables, codes))


def check_uplink(health: dict[str, Any], uplink: Uplink, inputs: EdgeInputs, server: str) -> None:
    """Refuses a server that does not serve this uplink's route for this run."""
    bottleneck = uplink.bottleneck
    check_route(
        health, server, uplink.path, None if bottleneck is None else (bottleneck.name, bottleneck.describe())
    )
    routes = health["routes"]
    if uplink.path == wire.IMAGE_PATH and routes[uplink.path].get("shape") != list(inputs.images.shape[1:]):
        raise UsageError(
            f"{server} takes images of shape {routes[uplink.path].get('shape')}: serve the same run"
        )
