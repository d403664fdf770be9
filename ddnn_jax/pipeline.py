"""``ddnn run``: train -> collect -> route -> evaluate -> report, resumable stage by stage.

Training resumes from its last checkpoint, collection is skipped when the outputs come from the
current best epoch, a router family is skipped when its directory holds the same configuration,
and evaluate/report (seconds) are always redone from the files. An interrupted run therefore
continues where it stopped when the same command is given again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from ddnn_jax import runfiles
from ddnn_jax.benchmarks import inference as inference_bench
from ddnn_jax.collect import collect, outputs_complete
from ddnn_jax.config import TrainConfig
from ddnn_jax.evaluate import INFERENCE_BENCH, WEIGHT_SWEEP, evaluate
from ddnn_jax.report import report
from ddnn_jax.route import route
from ddnn_jax.router import DEFAULT_TARGETS, DEPTH_PRESETS, RouterConfig
from ddnn_jax.train import run_training

RUN_PLAN = "run_plan.json"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Which routers and side studies ``ddnn run`` produces besides the DDNN itself."""

    targets: tuple[float, ...] = DEFAULT_TARGETS  # grid of the logits routers
    inputs: tuple[str, ...] | None = None  # None: default_inputs() for this backend
    # High-dimensional inputs cost far more per epoch: a short grid and fewer epochs for them.
    heavy_targets: tuple[float, ...] = (0.3, 0.54, 0.7)
    heavy_max_epochs: int = 15
    ablations: bool = True  # oracle labels (5.2), depth (6.3) and dropout (6.4) at L0 = 0.54
    sweep_weights: tuple[float, ...] = (0.2, 0.5, 0.8)  # Fig. 6.17; empty to skip
    sweep_seeds: int = 2  # runs per weight
    sweep_epochs: int = 2  # short runs, stated on the figure
    sweep_limit_train: int = 5000
    router_seed: int = 0


def default_inputs() -> tuple[str, ...]:
    """Every input mode on an accelerator; no CNN routers on CPU, where a CNN router trained on
    every split's feature maps would cost more than the DDNN itself (``--inputs`` adds them)."""
    if jax.default_backend() == "cpu":
        return ("logits", "logits+", "features")
    return ("logits", "logits+", "features", "features-cnn", "images")


def router_families(plan: RunPlan) -> dict[str, RouterConfig]:
    """Every router family of the plan, by directory name."""
    families = {}
    inputs = plan.inputs or default_inputs()
    for mode in inputs:
        heavy = mode not in ("logits", "logits+")
        families[mode] = RouterConfig(
            inputs=mode, seed=plan.router_seed,
            targets=plan.heavy_targets if heavy else plan.targets,
            max_epochs=plan.heavy_max_epochs if heavy else RouterConfig.max_epochs,
        )
    if plan.ablations and "logits" in inputs:
        single = dict(inputs="logits", seed=plan.router_seed, targets=(0.54,))
        families["logits-oracle"] = RouterConfig(labels="oracle", **{**single, "targets": plan.targets})
        for depth in (3, 8):
            families[f"logits-depth{depth}"] = RouterConfig(hidden=DEPTH_PRESETS[depth], **single)
        for rate in (0.0, 0.1, 0.2, 0.6):
            families[f"logits-dropout{rate}"] = RouterConfig(dropout_rate=rate, **single)
    return families


def _train_and_collect(config: TrainConfig, run_dir: Path, with_features: bool) -> None:
    run_training(config, run_dir)
    if not outputs_complete(run_dir, with_features=with_features):
        collect(run_dir, with_features=with_features)


def run(config: TrainConfig, run_dir: Path, plan: RunPlan = RunPlan()) -> Path:
    """Runs every stage of the plan on ``run_dir``; returns the report's path."""
    plan = dataclasses.replace(plan, inputs=plan.inputs or default_inputs())
    families = router_families(plan)
    needs_features = any(f.inputs.startswith("features") for f in families.values())
    print(f"[1-2/5] training {run_dir} and collecting its per-sample outputs", flush=True)
    _train_and_collect(config, run_dir, needs_features)
    for name, family in families.items():
        print(f"[3/5] router family {name}", flush=True)
        route(run_dir, family, name=name)
    for weight in plan.sweep_weights:
        for seed in range(plan.sweep_seeds):
            print(f"[3/5] local-weight sweep: w={weight} seed {seed}", flush=True)
            sweep = dataclasses.replace(
                config, local_weight=str(weight), seed=seed, epochs=plan.sweep_epochs,
                limit_train=min(plan.sweep_limit_train, config.limit_train or plan.sweep_limit_train),
            )
            _train_and_collect(sweep, run_dir / WEIGHT_SWEEP / f"w{weight}_seed{seed}", False)
    if not (run_dir / INFERENCE_BENCH).is_file():
        print("[4/5] timing inference per mechanism (Fig. 6.5)", flush=True)
        inference_bench.main(["--run", str(run_dir), "--out", str(run_dir / INFERENCE_BENCH)])
    runfiles.write_json_atomic(run_dir / RUN_PLAN, dataclasses.asdict(plan))
    print("[4/5] evaluating", flush=True)
    evaluate(run_dir)
    print("[5/5] writing the report", flush=True)
    return report(run_dir)
