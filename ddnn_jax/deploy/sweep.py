"""Accuracy against bytes (``ddnn edge --sweep``): every deployable rule at every target of the
router family, with every way of offloading: z in each feature wire, the image raw and in PNG,
JPEG and WebP at a few qualities, and the codes of each bottleneck the server serves, packed and
entropy-coded. One pass of the evaluated images per uplink."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.mechanisms import ROUTER, deployable_rules
from ddnn_jax.core.router_net import RouterConfig
from ddnn_jax.deploy import image_wire, wire
from ddnn_jax.deploy.client import CloudClient
from ddnn_jax.deploy.edge import EdgeConfig, check_server
from ddnn_jax.deploy.edge_half import EdgeInputs, load_inputs, made_from
from ddnn_jax.deploy.rules import Rule, build_rule, router_family
from ddnn_jax.deploy.uplink import Uplink, build_uplink, check_uplink
from ddnn_jax.rundir import FamilyRecord, RunDir, write_json

QUALITIES = (90, 75, 50)  # of the lossy image formats in the sweep


def sweep(
    run_dir: RunDir | Path, config: EdgeConfig, *, out: Path | None = None, progress: Progress = Progress()
) -> Path:
    """Entropy and the calibrated router (``config.family``) at each of the family's targets,
    with every uplink: accuracy, local rate and uplink bytes per sample (one request per
    offloaded sample, headers included, each sample its own bytes where a wire compresses).
    The cloud answers every sample once per uplink over the network; each rule's decisions
    then pick the answers it would have asked for.

    Returns:
      The path of sweep.json (default RUN_DIR/edge/sweep.json).
    """
    config.check()
    token = config.token()
    inputs = load_inputs(run_dir, config.images, config.limit, progress)
    if inputs.labels is None:
        raise UsageError("the sweep scores accuracy: give labelled images (class folders 0 .. C-1)")
    _, record = router_family(inputs.run, config.family)
    client = CloudClient(config.server, config.timeout_s, token, config.tls_ca)
    health = client.health()
    if health is None:
        raise UsageError(
            f"no answer from {config.server}{wire.HEALTH_PATH}: start 'ddnn serve --run {inputs.run}'"
        )
    uplinks = _uplinks(inputs, health, config.batch)
    check_server(health, inputs, uplinks[0], progress, config.server)
    for uplink in uplinks:
        check_uplink(health, uplink, inputs, config.server)
    z, local_logits = _edge_outputs(inputs, config.batch, progress)
    rules = _rules(inputs, config, record)
    rows = np.arange(len(inputs.images))
    decisions = {
        key: np.asarray(rule.decide(rows, local_logits, z, inputs.images), bool)
        for key, rule in rules.items()
    }
    local_right = local_logits.argmax(-1) == inputs.labels
    points, request_bytes = [], {}
    try:
        for uplink in uplinks:
            cloud_pred, sample_bytes = _cloud_over(inputs, z, client, config, uplink, progress)
            request_bytes[uplink.label] = float(sample_bytes.mean())
            cloud_right = cloud_pred == inputs.labels
            points += _uplink_points(uplink, rules, decisions, local_right, cloud_right, sample_bytes)
    finally:
        client.close()
    result = _result(inputs, config, health, float(local_right.mean()), request_bytes, points)
    path = out or inputs.run.edge_sweep
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return path


def _uplinks(inputs: EdgeInputs, health: dict[str, Any], batch: int) -> list[Uplink]:
    """Every uplink the sweep measures: z in each feature wire, the image in each image wire (the
    lossy ones at each of QUALITIES), and each bottleneck both the run and the server have."""
    made = [build_uplink(inputs, name) for name in wire.wires_of(wire.FEATURES)]
    for name in wire.wires_of(wire.IMAGES):
        qualities = QUALITIES if name in image_wire.LOSSY else (None,)
        made += [build_uplink(inputs, name, quality=quality) for quality in qualities]
    served = health.get("bottlenecks") or {}
    for bottleneck in (b for b in inputs.run.bottlenecks() if b in served):
        made += [
            build_uplink(inputs, name, bottleneck=bottleneck, batch=batch)
            for name in wire.wires_of(wire.CODES)
        ]
    return made


def _result(
    inputs: EdgeInputs,
    config: EdgeConfig,
    health: dict[str, Any],
    edge_only_accuracy: float,
    request_bytes: dict[str, float],
    points: list[dict[str, Any]],
) -> dict[str, Any]:
    """sweep.json: the points, and what they were measured on."""
    return {
        **made_from(inputs),
        "config": dataclasses.asdict(config),
        "server": health,
        "images": "test split" if inputs.test_split else str(config.images),
        "samples": len(inputs.images),
        "edge_only_accuracy": edge_only_accuracy,
        "image_bytes": int(inputs.images[0].nbytes),
        # mean bytes of a one-sample request (HTTP head included) by uplink label
        "request_bytes": request_bytes,
        "points": points,
    }


def _rules(inputs: EdgeInputs, config: EdgeConfig, record: FamilyRecord) -> dict[tuple[str, float], Rule]:
    """Every deployable rule and the router, at each target the router family was calibrated for."""
    return {
        (mechanism, target): build_rule(inputs, mechanism, target, config.family)
        for mechanism in (*deployable_rules(), ROUTER)
        for target in RouterConfig.from_json(record.config).targets
    }


def _uplink_points(
    uplink: Uplink,
    rules: dict[tuple[str, float], Rule],
    decisions: dict[tuple[str, float], np.ndarray],
    local_right: np.ndarray,
    cloud_right: np.ndarray,
    sample_bytes: np.ndarray,
) -> list[dict[str, Any]]:
    """The sweep's points of one uplink: the cloud alone, then each rule at each target."""
    n = len(local_right)
    points = [
        _sweep_point("cloud_only", None, uplink, np.ones(n, bool), local_right, cloud_right, sample_bytes)
    ]
    for (mechanism, target), offload in decisions.items():
        point = _sweep_point(mechanism, target, uplink, offload, local_right, cloud_right, sample_bytes)
        point["curve"] = rules[mechanism, target].curve
        points.append(point)
    return points


def _cloud_over(
    inputs: EdgeInputs,
    z: np.ndarray,
    client: CloudClient,
    config: EdgeConfig,
    uplink: Uplink,
    progress: Progress,
) -> tuple[np.ndarray, np.ndarray]:
    """The cloud's predictions of every sample sent over ``uplink`` (batches of ``config.batch``),
    and the uplink bytes of each sample sent alone in a request: one such request measured on
    the socket, the others by the length of their bodies (the head differs only in the digits
    of its Content-Length)."""
    n, classes = len(z), inputs.edge.num_classes
    predictions, bodies = np.zeros(n, np.int64), np.zeros(n, np.int64)
    fixed = wire.fixed_size(uplink.wire)
    with progress.bar(n, f"sweep {uplink.label}", unit="img") as bar:
        for start in range(0, n, config.batch):
            rows = slice(start, min(start + config.batch, n))
            values = uplink.make(inputs.images[rows], z[rows])
            answer = client.infer(
                wire.encode(values, uplink.wire, uplink.param), len(values), classes, uplink.path
            )
            if answer.logits is None:
                raise UsageError(f"the server failed during the sweep ({answer.reason}): check it and rerun")
            predictions[rows] = answer.logits.argmax(-1)
            if not fixed:
                bodies[rows] = [len(wire.encode(v[None], uplink.wire, uplink.param)) for v in values]
            bar.update(len(values))
    first = uplink.body(inputs.images[:1], z[:1])
    if fixed:
        bodies[:] = len(first)
    single = client.infer(first, 1, classes, uplink.path)
    if single.logits is None:
        raise UsageError(f"the server failed during the sweep ({single.reason}): check it and rerun")
    head = single.bytes_up - len(first) - len(str(len(first)))
    return predictions, head + bodies + np.char.str_len(bodies.astype(str))


def _edge_outputs(inputs: EdgeInputs, batch: int, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """z and local logits of every evaluated sample, computed in batches."""
    n = len(inputs.images)
    zs, logits = [], []
    with progress.bar(n, "edge", unit="img") as bar:
        for start in range(0, n, batch):
            z, local_logits = inputs.edge(inputs.images[start : start + batch])
            zs.append(z)
            logits.append(local_logits)
            bar.update(len(z))
    return np.concatenate(zs), np.concatenate(logits)


def _sweep_point(
    mechanism: str,
    target: float | None,
    uplink: Uplink,
    offload: np.ndarray,
    local_right: np.ndarray,
    cloud_right: np.ndarray,
    sample_bytes: np.ndarray,
) -> dict[str, Any]:
    right = np.where(offload, cloud_right, local_right)
    return {
        "mechanism": mechanism,
        "target": target,
        "wire": uplink.wire,
        "uplink": uplink.label,
        "kind": wire.WIRES[uplink.wire].kind,  # what it sends: features, codes or images
        "local_rate": float(1.0 - offload.mean()),
        "accuracy": float(right.mean()),
        "bytes_per_sample": float(np.where(offload, sample_bytes, 0).mean()),
    }
