"""Accuracy against bytes (``ddnn edge --sweep``): every deployable rule at every target of the
router family, with z sent in every wire, from one pass of the evaluated images per wire."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.mechanisms import ROUTER, deployable_rules
from ddnn_jax.core.router_net import RouterConfig
from ddnn_jax.deploy import wire
from ddnn_jax.deploy.client import CloudClient
from ddnn_jax.deploy.edge import EdgeConfig, check_server
from ddnn_jax.deploy.edge_half import EdgeInputs, load_inputs, made_from
from ddnn_jax.deploy.rules import Rule, build_rule, router_family
from ddnn_jax.rundir import FamilyRecord, RunDir, write_json


def sweep(
    run_dir: RunDir | Path, config: EdgeConfig, *, out: Path | None = None, progress: Progress = Progress()
) -> Path:
    """Entropy and the calibrated router (``config.family``) at each of the family's targets,
    with z sent in every wire: accuracy, local rate and uplink bytes per sample (one request
    per offloaded sample, headers included). The cloud answers every sample once per wire over
    the network; each rule's decisions then pick the answers it would have asked for.

    Returns:
      The path of sweep.json (default RUN_DIR/edge/sweep.json).
    """
    config.check()
    inputs = load_inputs(run_dir, config.images, config.limit, progress)
    if inputs.labels is None:
        raise UsageError("the sweep scores accuracy: give labelled images (class folders 0 .. C-1)")
    _, record = router_family(inputs.run, config.family)
    client = CloudClient(config.server, config.timeout_s)
    health = client.health()
    if health is None:
        raise UsageError(
            f"no answer from {config.server}{wire.HEALTH_PATH}: start 'ddnn serve --run {inputs.run}'"
        )
    check_server(health, inputs.edge, progress, config.server)
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
        for wire_name in wire.WIRES:
            cloud_pred, request_bytes[wire_name] = _cloud_over_wire(
                inputs, z, client, config, wire_name, progress
            )
            cloud_right = cloud_pred == inputs.labels
            points += _wire_points(wire_name, rules, decisions, local_right, cloud_right, request_bytes)
    finally:
        client.close()
    result = _result(inputs, config, health, float(local_right.mean()), request_bytes, points)
    path = out or inputs.run.edge_sweep
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return path


def _result(
    inputs: EdgeInputs,
    config: EdgeConfig,
    health: dict[str, Any],
    edge_only_accuracy: float,
    request_bytes: dict[str, int],
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
        "request_bytes": request_bytes,
        "payload_bytes": {w: wire.payload_bytes(w, inputs.edge.feature_shape) for w in wire.WIRES},
        "points": points,
    }


def _rules(inputs: EdgeInputs, config: EdgeConfig, record: FamilyRecord) -> dict[tuple[str, float], Rule]:
    """Every deployable rule and the router, at each target the router family was calibrated for."""
    return {
        (mechanism, target): build_rule(inputs, mechanism, target, config.family)
        for mechanism in (*deployable_rules(), ROUTER)
        for target in RouterConfig.from_json(record.config).targets
    }


def _wire_points(
    wire_name: str,
    rules: dict[tuple[str, float], Rule],
    decisions: dict[tuple[str, float], np.ndarray],
    local_right: np.ndarray,
    cloud_right: np.ndarray,
    request_bytes: dict[str, int],
) -> list[dict[str, Any]]:
    """The sweep's points of one wire: the cloud alone, then each rule at each target."""
    n = len(local_right)
    points = [
        _sweep_point("cloud_only", None, wire_name, np.ones(n, bool), local_right, cloud_right, request_bytes)
    ]
    for (mechanism, target), offload in decisions.items():
        point = _sweep_point(mechanism, target, wire_name, offload, local_right, cloud_right, request_bytes)
        point["curve"] = rules[mechanism, target].curve
        points.append(point)
    return points


def _cloud_over_wire(
    inputs: EdgeInputs,
    z: np.ndarray,
    client: CloudClient,
    config: EdgeConfig,
    wire_name: str,
    progress: Progress,
) -> tuple[np.ndarray, int]:
    """The cloud's predictions of every sample with z sent in ``wire_name`` (batches of
    ``config.batch``), and the uplink bytes of a one-sample request in it."""
    n, classes = len(z), inputs.edge.num_classes
    predictions = np.zeros(n, np.int64)
    with progress.bar(n, f"sweep {wire_name}", unit="img") as bar:
        for start in range(0, n, config.batch):
            rows = slice(start, min(start + config.batch, n))
            answer = client.infer(wire.encode_features(z[rows], wire_name), len(z[rows]), classes)
            if answer.logits is None:
                raise UsageError(f"the server failed during the sweep ({answer.reason}): check it and rerun")
            predictions[rows] = answer.logits.argmax(-1)
            bar.update(len(z[rows]))
    single = client.infer(wire.encode_features(z[:1], wire_name), 1, classes)
    if single.logits is None:
        raise UsageError(f"the server failed during the sweep ({single.reason}): check it and rerun")
    return predictions, single.bytes_up


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
    wire_name: str,
    offload: np.ndarray,
    local_right: np.ndarray,
    cloud_right: np.ndarray,
    request_bytes: dict[str, int],
) -> dict[str, Any]:
    right = np.where(offload, cloud_right, local_right)
    return {
        "mechanism": mechanism,
        "target": target,
        "wire": wire_name,
        "local_rate": float(1.0 - offload.mean()),
        "accuracy": float(right.mean()),
        "bytes_per_sample": float(offload.mean() * request_bytes[wire_name]),
    }
