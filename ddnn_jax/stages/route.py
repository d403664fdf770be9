"""The route stage: label a run's collected outputs for every target and train one router family.

A family (one input kind, one labelling, one architecture, a grid of targets) is written to
``RUN_DIR/routers/NAME/`` by ``rundir.write_family``: its record (configuration, the outputs it
was made from, B*(L0), per-target best epoch and histories, wall times), the router logits of
every split, and the best-on-validation weights stacked over targets. The directory is built
beside its final name and renamed in, so it is complete or absent.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.decisions import calibrated_thresholds
from ddnn_jax.core.labels import check_targets, correctness
from ddnn_jax.core.meta import MetaSet, labelling, meta_set
from ddnn_jax.core.router_losses import router_loss
from ddnn_jax.core.router_net import RouterConfig, raw_inputs, router_flops
from ddnn_jax.core.router_training import (
    GridResult,
    make_grid_predictor,
    make_grid_trainer,
    model_keys,
    select_candidates,
)
from ddnn_jax.core.variants import valfit
from ddnn_jax.data import channel_statistics
from ddnn_jax.rundir import (
    SPLITS,
    FamilyDir,
    FamilyRecord,
    RunDir,
    SplitOutputs,
    as_run,
    checkpoints,
    locked,
    outputs_fingerprint,
    read_family,
    read_family_scores,
    read_oof_outputs,
    read_outputs,
    read_run_record,
    split_images,
    write_family,
)
from ddnn_jax.rundir.bottlenecks import current_bottleneck, read_bottleneck_logits, read_coded_bytes

QUALITY = {  # the per-epoch validation metric of each objective, as router.json names it
    "grid": "decision_accuracy",
    "score": "mean_accuracy_over_budgets",
    "budget": "decision_accuracy_mean_over_targets",
}


def default_name(config: RouterConfig) -> str:
    """'logits', 'logits+', 'features-cnn', ... with '-LABELS' for labels other than the
    objective's first ('-oracle'), '-score' for the score objective ('-score-gain' when it
    regresses the gain), and '-LOSS' for a loss other than the objective's default."""
    default_loss = router_loss(None, config.objective).name
    loss = "" if config.loss in (None, default_loss) else f"-{config.loss}"
    first = "benefit" if config.objective == "score" else "cost"
    labels = "" if config.labels == first else f"-{config.labels}"
    objective = "" if config.objective == "grid" else f"-{config.objective}"
    bottleneck = "" if config.bottleneck is None else f"-{config.bottleneck}"
    priced = f"-lam{config.byte_cost:g}" if config.byte_cost else ""
    return config.inputs + objective + labels + loss + bottleneck + priced


def check_family_name(name: str) -> str:
    """A family name is one plain directory name under routers/, never a path."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..", "."):
        raise UsageError(f"--name '{name}' is not a plain directory name: use letters, digits, '-', '+', '.'")
    if name.replace("_", "-").endswith("-calibrated"):
        raise UsageError(
            f"--name '{name}' would clash with the calibrated curve of another family: rename it"
        )
    return name


class Through(NamedTuple):
    """What a family priced for a bottleneck learns from, by split: the cloud's logits behind the
    bottleneck and each sample's entropy-coded payload in bytes."""

    cloud_logits: dict[str, np.ndarray]
    coded_bytes: dict[str, np.ndarray]

    def as_train(self, split: str) -> Through:
        """``split``'s arrays as the training split's (a family fit on validation)."""
        return Through({"train": self.cloud_logits[split]}, {"train": self.coded_bytes[split]})


def _through(run: RunDir, config: RouterConfig, outputs: dict[str, SplitOutputs]) -> Through | None:
    """The bottleneck the family is priced for, refused unless it encodes the outputs' edge."""
    if config.bottleneck is None:
        return None
    _, directory = current_bottleneck(run, config.bottleneck, outputs["test"].checkpoint)
    return Through(read_bottleneck_logits(directory), read_coded_bytes(directory))


def meta_labels(
    outputs: dict[str, SplitOutputs],
    targets: np.ndarray,
    config: RouterConfig,
    through: Through | None = None,
) -> MetaSet:
    """The family's meta-dataset (``core.meta``): B*(L0) from the training split, every split's
    training targets under them, and the models to train with their per-sample weights. A
    family priced for a bottleneck (``through``) takes the cloud's correctness behind it, and
    its benefit loses byte_cost per kB of the sample's payload."""
    per_split = {}
    for name, o in outputs.items():
        if through is None:
            per_split[name] = correctness(o.local_logits, o.cloud_logits, o.labels)
            continue
        c = correctness(o.local_logits, through.cloud_logits[name], o.labels)
        per_split[name] = c._replace(
            benefit=c.benefit - config.byte_cost * through.coded_bytes[name] / 1000.0
        )
    entry = labelling(config.labels, config.objective)
    return meta_set(entry, per_split, targets, budget_input=config.objective == "budget")


def config_record(config: RouterConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def is_up_to_date(family: FamilyDir, config: RouterConfig, made_from: str) -> bool:
    """Whether the family holds this configuration trained on exactly these outputs."""
    if not family.is_complete():
        return False
    try:
        record = read_family(family)
        scores = read_family_scores(family)
    except UsageError:
        return False  # damaged: train it again
    if any(s.shape[0] != config.score_rows for s in scores.values()):
        return False
    try:
        same = RouterConfig.from_json(record.config) == config
    except TypeError:
        return False  # written by another version: train it again
    return same and record.made_from == made_from


class _GridBar:
    """A live bar over the grid's epochs: routers done and their best validation quality."""

    def __init__(self, progress: Progress, name: str, config: RouterConfig):
        self.bar = progress.bar(config.max_epochs, f"router {name}", unit="epoch")
        self.targets = config.models

    def on_epoch(self, epochs, training, best_val) -> None:
        self.bar.update(int(np.max(epochs)) - self.bar.n)
        self.bar.set_postfix_str(
            f"routers done {self.targets - int(np.sum(training))}/{self.targets}, "
            f"best val {float(np.mean(best_val)):.4f}",
            refresh=False,
        )


def _train_grid(config: RouterConfig, inputs, meta: MetaSet, progress: Progress, name: str):
    """Compiles and runs the grid trainer: (GridResult, seconds to compile, seconds to train)."""
    live = _GridBar(progress, name, config)
    trainer = make_grid_trainer(
        config, len(inputs["train"]), on_epoch=live.on_epoch if progress.shows_bars else None
    )
    args = (
        model_keys(config, meta.candidates.target_of),
        inputs["train"],
        meta.targets["train"],
        meta.candidates.weights,
        inputs["val"],
        meta.targets["val"],
    )
    compile_seconds = trainer.compile(*args)
    started = time.perf_counter()
    try:
        result: GridResult = jax.block_until_ready(trainer(*args))
    finally:
        live.bar.close()
    return result, compile_seconds, time.perf_counter() - started


def route(
    run_dir: RunDir | Path,
    config: RouterConfig,
    *,
    name: str | None = None,
    progress: Progress = Progress(),
    outputs: dict[str, SplitOutputs] | None = None,
) -> FamilyDir:
    """Trains the router family ``config`` on ``run_dir``'s outputs; returns its directory.

    A family that already holds the same configuration trained on the same outputs is left as
    it is (training is deterministic, so it would be reproduced exactly).

    Args:
      run_dir: a run with ``outputs/`` (``ddnn collect``; ``--features`` for feature kinds).
      config: the family's configuration.
      name: directory name under ``routers/``; ``default_name(config)`` when None.
      progress: where the grid's live bar goes.
      outputs: the run's outputs already in memory (``read_outputs``, with features if the
        family reads them), so that ``ddnn run`` reads them once for all its families.
    Returns:
      The family's directory (``read_family`` and ``deployed_router`` read it).
    """
    try:
        config.check()
        targets = check_targets(config.targets)
    except ValueError as err:
        raise UsageError(str(err)) from None
    run = as_run(run_dir)
    family_name = check_family_name(name or default_name(config))
    read_run_record(run)
    with locked(run, f"route {family_name}"):
        if outputs is None or (config.kind.needs_features and outputs["train"].features is None):
            outputs = read_outputs(run, need_features=config.kind.needs_features)
        return _route(run, config, targets, family_name, progress, outputs)


def _route(
    run: RunDir,
    config: RouterConfig,
    targets: np.ndarray,
    family_name: str,
    progress: Progress,
    outputs: dict[str, SplitOutputs],
) -> FamilyDir:
    made_from = outputs_fingerprint(outputs)
    if is_up_to_date(run.family(family_name), config, made_from):
        return run.family(family_name)
    images = split_images(run, outputs) if config.kind.needs_images else {}

    # an out-of-fold family learns from the training split's out-of-fold logits
    source = {**outputs, "train": read_oof_outputs(run)} if config.fit_split == "oof" else outputs
    inputs = {s: raw_inputs(config.kind, source[s], images.get(s)) for s in SPLITS}
    mean, std = channel_statistics(inputs["val" if config.fit_split == "val" else "train"])
    inputs = {s: (x - mean) / std for s, x in inputs.items()}
    through = _through(run, config, outputs)
    if config.fit_split == "val":  # its own costs and B*
        meta = meta_labels({"train": outputs["val"]}, targets, config, through and through.as_train("val"))
        result, scores, members, (compile_seconds, train_seconds) = _cross_fit(
            config, inputs, meta, progress, family_name
        )
        kept = np.arange(len(targets))
    else:
        meta = meta_labels(source, targets, config, through)
        result, compile_seconds, train_seconds = _train_grid(config, inputs, meta, progress, family_name)
        result, kept = select_candidates(result, meta.candidates.target_of)
        predict = make_grid_predictor(config)
        scores = {s: np.asarray(predict(result.variables, inputs[s]), np.float32) for s in SPLITS}
        members = 1

    record = FamilyRecord(
        config=config_record(config),
        made_from=made_from,
        outputs_epoch=outputs["test"].epoch,
        benefit_thresholds=meta.thresholds.tolist(),
        decision_thresholds=calibrated_thresholds(scores["val"], targets).tolist(),
        best_epoch=np.asarray(result.best_epoch).tolist(),
        epochs_run=np.asarray(result.epochs_run).tolist(),
        quality=QUALITY[config.objective],
        train_quality=_history(result.train_quality),
        val_quality=_history(result.val_quality),
        input_shape=list(inputs["train"].shape[1:]),
        input_mean=np.ravel(mean).tolist(),
        input_std=np.ravel(std).tolist(),
        seconds={"compile": compile_seconds, "train": train_seconds},
        backend=jax.default_backend(),
        selected=[meta.candidates.values[m] for m in kept]
        if len(kept) < len(meta.candidates.values)
        else None,
        flops_per_sample=router_flops(config, inputs["train"].shape[1:]) + _input_flops(config, outputs),
        members=members,
    )
    save = functools.partial(checkpoints.save_tree, tree=result.variables)
    return write_family(run, family_name, record, scores, save)


def _cross_fit(config: RouterConfig, inputs, meta: MetaSet, progress: Progress, name: str):
    """The grid trained on the validation split's folds (``core.variants.valfit``): every fold's
    routers stacked target-major, the scores of every split (out of fold on validation), the
    number of folds, and the seconds (compile, train) summed over folds."""
    x, labels = inputs["val"], meta.targets["train"]
    held_out, _ = valfit.folds(len(x), config.seed)
    results, seconds = [], np.zeros(2)
    per_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    predict = make_grid_predictor(config)
    for k, rows in enumerate(held_out):
        fit = np.setdiff1d(np.arange(len(x)), rows)
        fold_meta = MetaSet(
            meta.thresholds,
            {"train": labels[:, fit], "val": labels[:, rows]},
            meta.candidates._replace(weights=meta.candidates.weights[:, fit]),
        )
        fold_inputs = {"train": x[fit], "val": x[rows]}
        result, *spent = _train_grid(config, fold_inputs, fold_meta, progress, f"{name} fold {k + 1}")
        seconds += spent
        results.append(result)
        for split in SPLITS:
            per_split[split].append(np.asarray(predict(result.variables, inputs[split]), np.float32))
    scores = {s: np.mean(per_split[s], axis=0) for s in SPLITS}
    scores["val"] = valfit.out_of_fold(per_split["val"], held_out)
    # [K] results of [G, ...] -> [G * K, ...], row g * K + k
    stacked = jax.tree.map(
        lambda *leaves: np.stack(leaves, axis=1).reshape(-1, *leaves[0].shape[1:]), *results
    )
    return stacked, scores, len(held_out), tuple(seconds)


def _input_flops(config: RouterConfig, outputs: dict[str, SplitOutputs]) -> int:
    """What making the router's input costs per sample beyond what the edge computes anyway."""
    features = outputs["train"].features
    if config.kind.extra_flops is None or features is None:
        return 0
    return config.kind.extra_flops(tuple(features.shape[1:]))


def _history(per_epoch: jax.Array) -> list[list[float]]:
    """[G, E] with NaN for epochs not run -> per-target lists of the epochs that ran."""
    return [[float(v) for v in row if np.isfinite(v)] for row in np.asarray(per_epoch)]
