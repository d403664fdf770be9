"""Out-of-fold outputs of a run's training split (``core.variants.out_of_fold``): K DDNNs, each
trained by the run's configuration without one fold, predict the fold they did not see.

The fold runs are run directories of their own under ``RUN_DIR/oof/fold_K/`` (they resume and
are audited like any run), trained by the run's framework, together as one program where the
plan trains runs together. ``oof/train.npz`` holds the training split's logits in the run's
order, and names the fold weights it came from, so that a finished one is not recomputed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ddnn_jax.common.progress import Progress
from ddnn_jax.core.training import build_model, make_predict_fn, predict_in_batches
from ddnn_jax.core.variants.out_of_fold import FOLDS, fold_of
from ddnn_jax.jobs.training import run_trainings
from ddnn_jax.rundir import (
    RunDir,
    SplitOutputs,
    as_run,
    checkpoints,
    read_oof_outputs,
    read_run_record,
    restore_best,
    run_data,
    write_oof_outputs,
)


def out_of_fold(
    run_dir: RunDir, *, folds: int = FOLDS, together: bool = False, progress: Progress = Progress()
) -> SplitOutputs:
    """Trains (or resumes) the run's K fold DDNNs and returns the training split's out-of-fold
    outputs, writing them to ``oof/train.npz`` unless that file holds them already."""
    run = as_run(run_dir)
    config = read_run_record(run).train
    fold_runs = [
        (dataclasses.replace(config, holdout_fold=k, holdout_folds=folds), run.oof_run(k))
        for k in range(folds)
    ]
    progress.stage(f"out-of-fold DDNNs: {folds} runs under {run.oof_dir}")
    run_trainings(fold_runs, together=together, progress=progress)
    best = [restore_best(fold_run) for _, fold_run in fold_runs]
    source = ",".join(f"{epoch}:{checkpoints.state_digest(state)}" for _, state, epoch in best)
    if run.oof_outputs.is_file():
        held = read_oof_outputs(run)
        if held.checkpoint == source:
            return held
    train = run_data(config).train
    assignment = fold_of(len(train.labels), folds, config.seed)
    local = cloud = None
    with progress.bar(len(train.labels), "out-of-fold outputs", unit="img", unit_scale=True) as bar:
        for k, (record, state, _) in enumerate(best):
            predict = make_predict_fn(build_model(record.train, record.num_classes), record.mean, record.std)
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            rows = assignment == k
            out = predict_in_batches(predict, variables, train.images[rows], config.eval_batch_size, bar)
            if local is None or cloud is None:
                local = np.zeros((len(rows), out[0].shape[-1]), np.float32)
                cloud = np.zeros_like(local)
            local[rows], cloud[rows] = out[0], out[1]
    assert local is not None and cloud is not None
    outputs = SplitOutputs(local, cloud, train.labels, epoch=0, checkpoint=source)
    write_oof_outputs(run, outputs)
    return outputs
