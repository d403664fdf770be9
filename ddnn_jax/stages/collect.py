"""Per-sample outputs of a trained DDNN: the source of the offloading meta-dataset.

``collect`` runs the best-on-validation weights in evaluation mode over the training, validation
and test splits and writes one ``rundir.SplitOutputs`` per split: local and cloud logits, labels,
the epoch they come from and, on request, the edge features z.
"""

from __future__ import annotations

from pathlib import Path

from ddnn_jax.common.progress import Progress
from ddnn_jax.core.training import (
    build_model,
    make_predict_fn,
    predict_in_batches,
)
from ddnn_jax.rundir import (
    SPLITS,
    RunDir,
    SplitOutputs,
    as_run,
    checkpoints,
    locked,
    read_run_record,
    restore_best,
    run_data,
    write_outputs,
)
from ddnn_jax.stages.cotrained import write_cotrained_family


def collect(
    run_dir: RunDir | Path, *, with_features: bool = False, progress: Progress = Progress()
) -> dict[str, Path]:
    """Writes the per-sample outputs of every split; returns their paths.

    Args:
      run_dir: a training run (config.json and checkpoints/).
      with_features: also store the edge feature maps z.
      progress: where the live bar over the images goes.
    Returns:
      The path of each split's ``outputs/{split}.npz``, by split name.
    """
    run = as_run(run_dir)
    read_run_record(run)  # before the lock: a directory that is no run gets no lock file
    with locked(run, "collect"):
        return _collect(run, with_features, progress)


def _collect(run: RunDir, with_features: bool, progress: Progress) -> dict[str, Path]:
    record, state, best_epoch = restore_best(run)
    config = record.train
    data = run_data(config)
    predict = make_predict_fn(
        build_model(config, data.num_classes), record.mean, record.std, with_features=with_features
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    digest = checkpoints.state_digest(state)
    outputs = {}
    total = sum(len(getattr(data, name)) for name in SPLITS)
    with progress.bar(total, "collect", unit="img", unit_scale=True) as bar:
        for name in SPLITS:
            split = getattr(data, name)
            out = predict_in_batches(predict, variables, split.images, config.eval_batch_size, bar)
            outputs[name] = SplitOutputs(
                local_logits=out[0],
                cloud_logits=out[1],
                labels=split.labels,
                epoch=best_epoch,
                features=out[2] if with_features else None,
                checkpoint=digest,
            )
    paths = write_outputs(run, outputs)
    if config.cotrain_router is not None:  # its router is one more family, scored on these outputs
        write_cotrained_family(run, record, state, outputs)
    return paths
