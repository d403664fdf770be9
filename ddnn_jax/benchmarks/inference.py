"""Inference cost per offloading mechanism (thesis Fig. 6.5).

    ddnn bench inference [--image-shape 28,28,1] [--run RUN_DIR] [--out FILE]
    (or python experiments/bench_inference.py ...)

Contenders, all in evaluation mode on uint8 images:

* ``edge_only``: the edge network (extractor + local head);
* ``edge_entropy``: the edge plus the entropy decision;
* ``edge_router``: the edge plus the router's decision (MLP on the local logits);
* ``ddnn_entropy`` / ``ddnn_router`` / ``ddnn_random``: the whole DDNN at L0 ~= 0.54, where only
  the samples the mechanism offloads run the cloud head.

Two regimes: per-sample latency at batch 1 (a decision per image, the cloud called only when the
decision says so, as a deployment would) and throughput at batch 1024 (the offloaded rows
gathered, padded to a multiple of 128 so that a handful of programs serve every split). Each is
``--runs`` runs (default 5) reported as mean and std, with the router's added cost over entropy;
that cost is also measured on the edge programs alone at batch 1 (1,000 calls a round, medians),
where the host loop's noise does not drown it.
With ``--run``, the run's best DDNN weights are used, and its trained logits router (the target
nearest 0.54, with its input standardisation) when ``ddnn route`` made one; otherwise random
weights and the default logits MLP. Every threshold is fitted so that 54 % of the timed images
stay local: the architecture and the offloaded share, not the weight values, set the cost.
``--out`` also writes every line to a JSON file, which ``ddnn report`` draws as Fig. 6.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from ddnn_jax import runfiles
from ddnn_jax.config import TrainConfig
from ddnn_jax.data import normalize
from ddnn_jax.policies import normalized_entropy
from ddnn_jax.route import ROUTER_RECORD, ROUTERS, VARIABLES
from ddnn_jax.router import RouterConfig, build_router
from ddnn_jax.train import build_model, create_train_state

TARGET = 0.54
BUCKET = 128


def _model_and_variables(run_dir: Path | None, shape, num_classes):
    if run_dir is None:
        config = TrainConfig()
        state = create_train_state(config, shape, num_classes)
        mean, std = np.full(shape[-1], 0.5, np.float32), np.full(shape[-1], 0.25, np.float32)
    else:
        from ddnn_jax.collect import restore_best
        from ddnn_jax.config import config_from_record

        record, state, _ = restore_best(run_dir)
        config = config_from_record(record)
        shape, num_classes = tuple(record["image_shape"]), record["num_classes"]
        mean = np.asarray(record["normalization"]["mean"], np.float32)
        std = np.asarray(record["normalization"]["std"], np.float32)
    model = build_model(config, num_classes)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return model, variables, shape, num_classes, mean, std


def _router(run_dir: Path | None, num_classes: int):
    """The decision network: (apply(local_logits) -> score, where its weights came from)."""
    family = run_dir / ROUTERS / "logits" if run_dir is not None else None
    if family is not None and (family / ROUTER_RECORD).is_file():
        record = json.loads((family / ROUTER_RECORD).read_text())
        fields = record["config"]
        config = RouterConfig(hidden=tuple(fields["hidden"]), dropout_rate=fields["dropout_rate"])
        nearest = int(np.argmin(np.abs(np.asarray(fields["targets"]) - TARGET)))
        stacked = serialization.msgpack_restore((family / VARIABLES).read_bytes())
        variables = jax.tree.map(lambda leaf: jnp.asarray(leaf[nearest]), stacked)
        scale = record["input_standardization"]
        mean, std = np.asarray(scale["mean"], np.float32), np.asarray(scale["std"], np.float32)
        source = f"{family} (L0 = {fields['targets'][nearest]})"
    else:
        config = RouterConfig()
        variables = build_router(config).init(jax.random.key(1), jnp.zeros((2, num_classes)), train=False)
        mean, std = np.zeros(num_classes, np.float32), np.ones(num_classes, np.float32)
        source = "random"
    router = build_router(config)
    return lambda local: router.apply(variables, (local - mean) / std, train=False), source


def _decision_programs(edge, image, runs: int, common: dict, calls: int = 1000) -> dict:
    """The router's cost at batch 1 without the host loop around it: each edge program alone,
    its answer and score fetched, ``calls`` times per round, rounds interleaved; medians."""
    ms = {name: [] for name in ("only", "entropy", "router")}
    for _ in range(runs):
        for name in ms:
            started = time.perf_counter()
            for _ in range(calls):
                jax.device_get(edge[name](image)[1:])
            ms[name].append(1e3 * (time.perf_counter() - started) / calls)
    median = {name: statistics.median(values) for name, values in ms.items()}
    overhead = median["router"] - median["entropy"]
    return {"measure": "router_overhead", "regime": "batch1_programs",
            "edge_only_ms": round(median["only"], 4), "edge_entropy_ms": round(median["entropy"], 4),
            "edge_router_ms": round(median["router"], 4), "over_entropy_ms": round(overhead, 4),
            "fraction_of_edge_only": round(overhead / median["only"], 4), **common}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-shape", default="28,28,1")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--run", type=Path, default=None, help="use this run's weights")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=200, help="images timed at batch 1")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="also write the lines here (JSON)")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2 (the spread needs two)")
    shape = tuple(int(s) for s in args.image_shape.split(","))
    model, variables, shape, num_classes, mean, std = _model_and_variables(
        args.run, shape, args.num_classes)
    router, router_source = _router(args.run, num_classes)

    def edge_fn(images):
        return model.apply(variables, normalize(images, mean, std), method="edge")

    # Each edge program computes its decision score in the same dispatch, as a device would.
    scores = {"only": None, "random": None, "entropy": normalized_entropy, "router": router}

    def edge_program(score_fn):
        def run(images):
            z, local = edge_fn(images)
            return z, local, None if score_fn is None else score_fn(local)
        return jax.jit(run)

    edge = {name: edge_program(f) for name, f in scores.items()}

    @jax.jit
    def cloud(z):
        return model.apply(variables, z, method="cloud_head")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, *shape), dtype=np.uint8)
    thresholds = {}

    def fit(subset):
        """Thresholds keeping TARGET of the timed images local: the offloaded share costs."""
        for name in ("entropy", "router"):
            thresholds[name] = float(np.quantile(np.asarray(edge[name](subset)[2]), TARGET))
    random_send = rng.random(args.batch_size) >= TARGET

    def decide(mechanism, score, index):
        """Which samples to offload, decided on the host as a deployment would."""
        if mechanism == "only":
            return np.zeros(len(index), bool)
        if mechanism == "random":
            return random_send[index]
        return score > thresholds[mechanism]

    # Every contender brings the local answer and its decision score to the host, and the cloud's
    # answer for what it offloads: they differ only in the score and in the cloud calls.
    def single(name: str):
        mechanism, with_cloud = name.split("_")[1], name.startswith("ddnn")

        def run():
            offloaded = 0
            for i in range(args.samples):
                z, local, score = edge[mechanism](images[i : i + 1])
                _, score = jax.device_get((local, score))
                if decide(mechanism, score, [i])[0]:
                    offloaded += 1
                    if with_cloud:
                        jax.device_get(cloud(z))
            return offloaded / args.samples
        return run

    def batched(name: str):
        mechanism, with_cloud = name.split("_")[1], name.startswith("ddnn")
        index = np.arange(args.batch_size)

        def run():
            z, local, score = edge[mechanism](images)
            _, score = jax.device_get((local, score))
            send = decide(mechanism, score, index)
            if with_cloud and send.any():
                rows = np.flatnonzero(send)
                padded = np.resize(rows, -(-len(rows) // BUCKET) * BUCKET)
                jax.device_get(cloud(z[padded]))
            return float(send.mean())
        return run

    names = ["edge_only", "edge_entropy", "edge_router", "ddnn_random", "ddnn_entropy", "ddnn_router"]
    common = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
              "image_shape": list(shape), "num_classes": num_classes, "target_local": TARGET,
              "weights": str(args.run) if args.run else "random", "router": router_source}
    lines = []
    regimes = (("batch1", single, args.samples), (f"batch{args.batch_size}", batched, args.batch_size))
    for regime, make, per in regimes:
        fit(images[:per])
        runs = {name: make(name) for name in names}
        for run in runs.values():  # compiles what the timed runs call: their decisions repeat
            run()
        seconds = {name: [] for name in names}
        offload = {}
        for r in range(args.runs):  # interleaved, each run starting one contender later
            for name in names[r % len(names):] + names[:r % len(names)]:
                started = time.perf_counter()
                offload[name] = runs[name]()
                seconds[name].append(time.perf_counter() - started)
        for name in names:
            per_sample_ms = [1e3 * s / per for s in seconds[name]]
            lines.append({
                "measure": "inference", "regime": regime, "mechanism": name,
                "per_sample_ms_mean": round(statistics.mean(per_sample_ms), 4),
                "per_sample_ms_std": round(statistics.stdev(per_sample_ms), 4),
                "images_per_s": round(per / statistics.mean(seconds[name]), 1),
                "offloaded_fraction": round(offload[name], 4), **common,
            })
        by = {line["mechanism"]: line for line in lines if line["regime"] == regime}
        overhead = by["edge_router"]["per_sample_ms_mean"] - by["edge_entropy"]["per_sample_ms_mean"]
        lines.append({"measure": "router_overhead", "regime": regime,
                      "over_entropy_ms": round(overhead, 4),
                      "fraction_of_edge_only": round(overhead / by["edge_only"]["per_sample_ms_mean"], 4),
                      **common})
    lines.append(_decision_programs(edge, images[:1], args.runs, common))
    for line in lines:
        print(json.dumps(line))
    if args.out is not None:
        runfiles.write_json_atomic(args.out, lines)
    return lines


if __name__ == "__main__":
    main()
