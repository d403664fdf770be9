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
With a run that has learned bottlenecks (``ddnn bottleneck``), one ``encoder_overhead`` line per
bottleneck gives the edge's extra cost of encoding z into its codes: XLA's FLOP count of the
edge with and without the encoder, and both programs timed at batch 1 like the decisions.
``--out`` also writes every line to a JSON file, which ``ddnn report`` draws as Fig. 6.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.labels import normalized_entropy
from ddnn_jax.core.mechanisms import REFERENCE_TARGET
from ddnn_jax.core.router_net import RouterConfig, build_router
from ddnn_jax.core.training import build_model, create_train_state
from ddnn_jax.data import normalize
from ddnn_jax.rundir import RunDir, deployed_router, read_family, restore_best, write_json
from ddnn_jax.rundir.bottlenecks import deployed_bottleneck

MECHANISMS = ("edge_only", "edge_entropy", "edge_router", "ddnn_random", "ddnn_entropy", "ddnn_router")
BUCKET = 128  # offloaded rows are padded to a multiple of this: a handful of cloud programs


@dataclasses.dataclass(frozen=True)
class InferenceBenchConfig:
    """What ``ddnn bench inference`` times."""

    run: Path | None = None  # a run's weights and logits router; random weights when None
    image_shape: tuple[int, ...] = (28, 28, 1)  # without a run
    num_classes: int = 10  # without a run
    runs: int = 5  # timed runs per contender (mean and std need 2)
    samples: int = 200  # images timed one by one at batch 1
    batch_size: int = 1024  # the throughput regime's batch
    target_local: float = REFERENCE_TARGET  # the share kept local by every threshold
    program_calls: int = 1000  # calls per round when timing the edge programs alone


@dataclasses.dataclass(frozen=True)
class _Programs:
    """The compiled pieces a deployment runs: the edge with each decision score, the cloud."""

    edge: dict[str, Callable]  # 'only', 'random', 'entropy', 'router' -> images -> (z, local, score)
    cloud: Callable  # z -> cloud logits
    router_source: str
    image_shape: tuple[int, ...]
    num_classes: int


def _network(config: InferenceBenchConfig):
    """(model, variables, image shape, classes, mean, std) of the run, or random weights."""
    if config.run is None:
        shape, num_classes = tuple(config.image_shape), config.num_classes
        state = create_train_state(TrainConfig(), shape, num_classes)
        mean, std = np.full(shape[-1], 0.5, np.float32), np.full(shape[-1], 0.25, np.float32)
        model = build_model(TrainConfig(), num_classes)
    else:
        record, state, _ = restore_best(RunDir(config.run))
        shape, num_classes = record.image_shape, record.num_classes
        mean, std = np.asarray(record.mean, np.float32), np.asarray(record.std, np.float32)
        model = build_model(record.train, num_classes)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return model, variables, shape, num_classes, mean, std


def _router(config: InferenceBenchConfig, num_classes: int):
    """The decision network: (apply(local_logits) -> score, where its weights came from)."""
    family = RunDir(config.run).family("logits") if config.run is not None else None
    if family is not None and family.is_complete():
        targets = RouterConfig.from_json(read_family(family).config).targets
        nearest = int(np.argmin(np.abs(np.asarray(targets) - config.target_local)))
        return deployed_router(family, nearest).logits, f"{family.root} (L0 = {targets[nearest]})"
    router = build_router(RouterConfig())
    variables = router.init(jax.random.key(1), jnp.zeros((2, num_classes)), train=False)
    return lambda local: router.apply(variables, local, train=False), "random"


def build_programs(config: InferenceBenchConfig) -> _Programs:
    """Each edge program computes its decision score in the same dispatch, as a device would."""
    model, variables, shape, num_classes, mean, std = _network(config)
    router, router_source = _router(config, num_classes)
    scores = {"only": None, "random": None, "entropy": normalized_entropy, "router": router}

    def edge_program(score_fn):
        def run(images):
            z, local = model.apply(variables, normalize(images, mean, std), method="edge")
            return z, local, None if score_fn is None else score_fn(local)

        return jax.jit(run)

    cloud = jax.jit(lambda z: model.apply(variables, z, method="cloud_head"))
    edge = {name: edge_program(f) for name, f in scores.items()}
    return _Programs(edge, cloud, router_source, tuple(shape), num_classes)


class _Deployment:
    """Contenders that decide on the host, as a deployment would: the local answer and its score
    come back, and the cloud is called for what the decision offloads."""

    def __init__(self, programs: _Programs, images: np.ndarray, config: InferenceBenchConfig):
        self.p, self.images, self.config = programs, images, config
        self.thresholds: dict[str, float] = {}
        rng = np.random.default_rng(1)
        self.random_send = rng.random(len(images)) >= config.target_local

    def fit(self, subset: np.ndarray) -> None:
        """Thresholds keeping the target share of ``subset`` local: the offloaded share costs."""
        for name in ("entropy", "router"):
            score = np.asarray(self.p.edge[name](subset)[2])
            self.thresholds[name] = float(np.quantile(score, self.config.target_local))

    def decide(self, mechanism: str, score, index) -> np.ndarray:
        if mechanism == "only":
            return np.zeros(len(index), bool)
        if mechanism == "random":
            return self.random_send[index]
        return score > self.thresholds[mechanism]

    def one_by_one(self, name: str) -> Callable[[], float]:
        """Latency: every image alone; returns the offloaded share."""
        mechanism, with_cloud = name.split("_")[1], name.startswith("ddnn")

        def run() -> float:
            offloaded = 0
            for i in range(self.config.samples):
                z, local, score = self.p.edge[mechanism](self.images[i : i + 1])
                _, score = jax.device_get((local, score))
                if self.decide(mechanism, score, [i])[0]:
                    offloaded += 1
                    if with_cloud:
                        jax.device_get(self.p.cloud(z))
            return offloaded / self.config.samples

        return run

    def batched(self, name: str) -> Callable[[], float]:
        """Throughput: one batch, the offloaded rows gathered for the cloud."""
        mechanism, with_cloud = name.split("_")[1], name.startswith("ddnn")
        index = np.arange(self.config.batch_size)

        def run() -> float:
            z, local, score = self.p.edge[mechanism](self.images)
            _, score = jax.device_get((local, score))
            send = self.decide(mechanism, score, index)
            if with_cloud and send.any():
                rows = np.flatnonzero(send)
                padded = np.resize(rows, -(-len(rows) // BUCKET) * BUCKET)
                jax.device_get(self.p.cloud(z[padded]))
            return float(send.mean())

        return run


def _time_regime(make: Callable[[str], Callable[[], float]], runs: int) -> tuple[dict, dict]:
    """Seconds per run and offloaded share of every contender, interleaved, each run starting
    one contender later; one warm-up call first compiles what the timed runs call."""
    contenders = {name: make(name) for name in MECHANISMS}
    for contender in contenders.values():
        contender()
    seconds: dict[str, list[float]] = {name: [] for name in MECHANISMS}
    offloaded: dict[str, float] = {}
    for r in range(runs):
        for name in MECHANISMS[r % len(MECHANISMS) :] + MECHANISMS[: r % len(MECHANISMS)]:
            started = time.perf_counter()
            offloaded[name] = contenders[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds, offloaded


def _regime_lines(regime: str, per: int, seconds: dict, offloaded: dict, common: dict) -> list[dict]:
    """One line per contender (mean and std per sample), then the router's cost over entropy."""
    lines = []
    for name in MECHANISMS:
        per_sample_ms = [1e3 * s / per for s in seconds[name]]
        lines.append(
            {
                "measure": "inference",
                "regime": regime,
                "mechanism": name,
                "per_sample_ms_mean": round(statistics.mean(per_sample_ms), 4),
                "per_sample_ms_std": round(statistics.stdev(per_sample_ms), 4),
                "images_per_s": round(per / statistics.mean(seconds[name]), 1),
                "offloaded_fraction": round(offloaded[name], 4),
                **common,
            }
        )
    by = {line["mechanism"]: line for line in lines}
    overhead = by["edge_router"]["per_sample_ms_mean"] - by["edge_entropy"]["per_sample_ms_mean"]
    lines.append(
        {
            "measure": "router_overhead",
            "regime": regime,
            "over_entropy_ms": round(overhead, 4),
            "fraction_of_edge_only": round(overhead / by["edge_only"]["per_sample_ms_mean"], 4),
            **common,
        }
    )
    return lines


def _decision_programs(edge: dict, image, runs: int, calls: int, common: dict) -> dict:
    """The router's cost at batch 1 without the host loop around it: each edge program alone,
    its answer and score fetched, ``calls`` times per round, rounds interleaved; medians."""
    ms: dict[str, list[float]] = {name: [] for name in ("only", "entropy", "router")}
    for _ in range(runs):
        for name in ms:
            started = time.perf_counter()
            for _ in range(calls):
                jax.device_get(edge[name](image)[1:])
            ms[name].append(1e3 * (time.perf_counter() - started) / calls)
    median = {name: statistics.median(values) for name, values in ms.items()}
    overhead = median["router"] - median["entropy"]
    return {
        "measure": "router_overhead",
        "regime": "batch1_programs",
        "edge_only_ms": round(median["only"], 4),
        "edge_entropy_ms": round(median["entropy"], 4),
        "edge_router_ms": round(median["router"], 4),
        "over_entropy_ms": round(overhead, 4),
        "fraction_of_edge_only": round(overhead / median["only"], 4),
        **common,
    }


def time_inference(config: InferenceBenchConfig) -> list[dict]:
    """Fig. 6.5's measurements: inference time per mechanism, repeated and interleaved.

    Args:
      config: the run (or random weights), the share kept local, batch and repeats.
    Returns:
      One dict per measurement (what ``ddnn bench inference`` prints and ``ddnn run`` writes
      to bench_inference.json)."""
    if config.runs < 2:
        raise ValueError("runs must be at least 2 (the spread needs two)")
    programs = build_programs(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.batch_size, *programs.image_shape), dtype=np.uint8)
    deployment = _Deployment(programs, images, config)
    common = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "image_shape": list(programs.image_shape),
        "num_classes": programs.num_classes,
        "target_local": config.target_local,
        "weights": str(config.run) if config.run else "random",
        "router": programs.router_source,
    }
    lines = []
    regimes = (
        ("batch1", deployment.one_by_one, config.samples),
        (f"batch{config.batch_size}", deployment.batched, config.batch_size),
    )
    for regime, make, per in regimes:
        deployment.fit(images[:per])
        seconds, offloaded = _time_regime(make, config.runs)
        lines += _regime_lines(regime, per, seconds, offloaded, common)
    lines.append(_decision_programs(programs.edge, images[:1], config.runs, config.program_calls, common))
    if config.run is not None:
        lines += _encoder_lines(RunDir(config.run), programs.edge["only"], images[:1], config, common)
    return lines


def _flops(program: Callable, *args) -> float:
    """XLA's count of the floating-point operations of one call of a jitted program."""
    cost = program.lower(*args).compile().cost_analysis()  # type: ignore[attr-defined]
    return float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))


def _encoder_lines(
    run: RunDir, edge: Callable, image: np.ndarray, config: InferenceBenchConfig, common: dict
) -> list[dict]:
    """For each of the run's bottlenecks, the edge's extra cost of its encoder at batch 1: XLA's
    FLOPs, and the edge program with and without the encoder, rounds interleaved, medians."""
    lines = []
    for name in run.bottlenecks():
        bottleneck = deployed_bottleneck(run, name)

        @jax.jit
        def encoded(images, b=bottleneck):
            z, local, _ = edge(images)
            return b.codes(b.variables, z), local

        ms: dict[str, list[float]] = {"edge": [], "encoded": []}
        for _ in range(config.runs):
            for key, program in (("edge", edge), ("encoded", encoded)):
                jax.device_get(program(image))  # compiled before the first round
                started = time.perf_counter()
                for _ in range(config.program_calls):
                    jax.device_get(program(image)[:2])
                ms[key].append(1e3 * (time.perf_counter() - started) / config.program_calls)
        edge_ms, encoded_ms = (statistics.median(ms[k]) for k in ("edge", "encoded"))
        edge_flops = _flops(edge, image)
        lines.append(
            {
                "measure": "encoder_overhead",
                "regime": "batch1_programs",
                "bottleneck": name,
                "payload_bytes": bottleneck.record.payload_bytes,
                "edge_ms": round(edge_ms, 4),
                "edge_encoder_ms": round(encoded_ms, 4),
                "over_edge_ms": round(encoded_ms - edge_ms, 4),
                "edge_flops": edge_flops,
                "encoder_flops": _flops(encoded, image) - edge_flops,
                **common,
            }
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``ddnn bench inference`` (the benchmark adds its exported-graph flags)."""
    defaults = InferenceBenchConfig()
    parser = argparse.ArgumentParser(
        prog="ddnn bench inference",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--image-shape", default="28,28,1", help="H,W,C of random weights' images")
    parser.add_argument(
        "--num-classes", type=int, default=defaults.num_classes, help="classes of the random weights"
    )
    parser.add_argument("--run", type=Path, default=None, help="use this run's weights and router")
    parser.add_argument("--runs", type=int, default=defaults.runs, help="timed runs per contender")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="images timed at batch 1")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="batch of the throughput regime"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the lines here (JSON)")
    return parser


def config_from(args: argparse.Namespace) -> InferenceBenchConfig:
    if args.runs < 2:
        raise ValueError("--runs must be at least 2 (the spread needs two)")
    return InferenceBenchConfig(
        run=args.run,
        image_shape=tuple(int(s) for s in args.image_shape.split(",")),
        num_classes=args.num_classes,
        runs=args.runs,
        samples=args.samples,
        batch_size=args.batch_size,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as err:
        parser.error(str(err))
    lines = time_inference(config)
    for line in lines:
        print(json.dumps(line))
    if args.out is not None:
        write_json(args.out, lines)
    return lines
