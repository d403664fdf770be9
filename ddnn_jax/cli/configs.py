"""From parsed flags to what the library takes: the config dataclasses of each stage, the plan of
``ddnn run``, progress, and the XLA runtime. Each builder checks its config, so bad input is
refused before anything is trained."""

from __future__ import annotations

import math
from pathlib import Path

from ddnn_jax.common import runtime
from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import TrainConfig, parse_local_weight
from ddnn_jax.core.families import input_kind, select_families
from ddnn_jax.core.guarantees import Guarantee
from ddnn_jax.core.labels import check_targets
from ddnn_jax.core.router_net import DEPTH_PRESETS, RouterConfig
from ddnn_jax.jobs.run import RunPlan
from ddnn_jax.rundir import read_json
from ddnn_jax.stages.evaluate import EvaluationConfig


def progress_from(args) -> Progress:
    return Progress(quiet=getattr(args, "quiet", False))


def train_config_from(args) -> TrainConfig:
    config = TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        local_weight=args.local_weight,
        seed=getattr(args, "seed", TrainConfig.seed),
        data_dir=args.data_dir,
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        cotrain_router=args.cotrain_router,
        cotrain_warmup=args.cotrain_warmup,
        cotrain_weight=args.cotrain_weight,
        edge_channels=args.edge_channels,
        local_hidden=args.local_hidden,
        download=args.download,
        conv=args.conv,
        precision=args.precision,
        framework=args.framework,
    )
    config.validate()
    return config


def run_plan_from(args) -> RunPlan:
    """The plan of ``ddnn run``, checked before anything is trained."""
    plan = RunPlan(
        targets=args.grid or RunPlan.targets,
        inputs=args.inputs,
        families=args.families,
        ablations=not args.no_ablations,
        inference_timing=not args.no_inference_timing,
        sweep_weights=args.sweep_weights,
        router_seed=args.router_seed,
    )
    try:
        check_targets(plan.targets)
        for mode in plan.inputs or ():
            input_kind(mode)
        for weight in plan.sweep_weights:
            parse_local_weight(str(weight))
        select_families(plan.families)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return plan


def router_inputs_from(args) -> tuple[str, ...]:
    """The input kinds ``ddnn route`` trains a family for; --name names one family only."""
    inputs = args.inputs or (RouterConfig.inputs,)
    if args.name and len(inputs) > 1:
        raise UsageError("--name names one router family: give a single --inputs value")
    return inputs


def router_config_from(args, inputs: str) -> RouterConfig:
    """The router family of ``ddnn route`` that reads ``inputs``, checked, so that a bad
    ``--inputs`` value is refused before any family trains."""
    config = RouterConfig(
        inputs=inputs,
        objective=args.objective,
        loss=args.loss,
        focal_gamma=args.focal_gamma,
        fit_split=args.fit_split,
        bottleneck=args.bottleneck,
        byte_cost=args.byte_cost,
        labels=args.labels or ("benefit" if args.objective == "score" else RouterConfig.labels),
        targets=args.grid or RouterConfig.targets,
        hidden=DEPTH_PRESETS[args.depth],
        dropout_rate=args.dropout,
        max_epochs=args.max_epochs,
        seed=args.router_seed,
    )
    try:
        config.check()
        check_targets(config.targets)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return config


def guarantee_from(args) -> Guarantee:
    guarantee = Guarantee(args.guarantee, args.epsilon, args.delta)
    try:
        guarantee.check()
    except ValueError as err:
        raise UsageError(f"--guarantee: {err}") from None
    return guarantee


def evaluation_config_from(args) -> EvaluationConfig:
    return EvaluationConfig(border_tau=args.tau, guarantee=guarantee_from(args))


def given_thresholds(path: Path | None) -> dict[str, list[float]] | None:
    """The thresholds of ``ddnn evaluate --thresholds FILE``, checked; None without the flag."""
    if path is None:
        return None
    value = read_json(path, 'give a JSON object such as {"logits": [0.1, -0.3]}')
    if not isinstance(value, dict) or not all(
        isinstance(v, list)
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in v)
        for v in value.values()
    ):
        raise UsageError(
            f"{path} must map router family names to lists of finite thresholds, one per target, "
            'such as {"logits": [0.1, -0.3]}'
        )
    return {k: [float(t) for t in v] for k, v in value.items()}


def _processes(args) -> runtime.Processes | None:
    """The multi-process flags, checked; None for a process on its own."""
    given = [getattr(args, name, None) for name in ("coordinator", "num_processes", "process_id")]
    if not getattr(args, "distributed", False):
        if any(value is not None for value in given):
            raise UsageError("--coordinator, --num-processes and --process-id need --distributed")
        return None
    coordinator, count, index = given
    if count is not None and count < 1:
        raise UsageError(f"--num-processes must be at least 1, got {count}")
    if index is not None and not 0 <= index < (count or index + 1):
        raise UsageError(f"--process-id must lie in [0, --num-processes), got {index}")
    return runtime.Processes(coordinator, count, index)


def configure_runtime(args) -> None:
    """Before anything starts JAX's backend: the compilation cache and GPU determinism."""
    cache = getattr(args, "compile_cache", "default")
    if cache == "":
        raise UsageError("--compile-cache needs a directory, or 'off'")
    try:
        deterministic = not getattr(args, "nondeterministic", False)
        runtime.configure(
            None if cache == "off" else cache, deterministic=deterministic, processes=_processes(args)
        )
    except OSError as err:
        raise UsageError(
            f"--compile-cache {cache}: cannot use it as a directory ({err.strerror}): give another, or 'off'"
        ) from None
