"""Training by whichever framework each run names (``TrainConfig.framework``, ``--backend``):
JAX through :mod:`ddnn_jax.stages.train`, PyTorch through :mod:`ddnn_jax.interop.torch_backend`.
Both write the same run directory; every stage after training reads either.

A framework is one module with a ``Trainer`` and one entry in ``TRAINERS``; PyTorch is imported
only when a torch run trains.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import FRAMEWORKS, TrainConfig
from ddnn_jax.rundir import RunDir
from ddnn_jax.stages import train as jax_training
from ddnn_jax.stages.train import Trainer

# framework -> the module whose TRAINER trains it (or the Trainer itself)
TRAINERS: dict[str, Trainer | str] = {"jax": jax_training.JAX, "torch": "ddnn_jax.interop.torch_backend"}
assert tuple(TRAINERS) == FRAMEWORKS


def trainer(framework: str) -> Trainer:
    """The Trainer of a framework named in FRAMEWORKS."""
    found = TRAINERS[framework]
    return importlib.import_module(found).TRAINER if isinstance(found, str) else found


def run_trainings(
    runs: Sequence[tuple[TrainConfig, RunDir | Path]],
    *,
    together: bool = False,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
) -> list[list[dict]]:
    """``stages.train.run_trainings`` for runs of any framework: each framework's runs are
    trained by its trainer, in the order given within it. Returns each run's per-epoch metrics
    in the order given."""
    histories: list[list[dict] | None] = [None] * len(runs)
    for framework in dict.fromkeys(config.framework for config, _ in runs):
        mine = [i for i, (config, _) in enumerate(runs) if config.framework == framework]
        done = jax_training.run_trainings(
            [runs[i] for i in mine],
            together=together,
            progress=progress,
            on_epoch_trained=on_epoch_trained,
            trainer=trainer(framework),
        )
        for i, history in zip(mine, done, strict=True):
            histories[i] = history
    return [history or [] for history in histories]


def run_training(
    config: TrainConfig,
    run_dir: RunDir | Path,
    *,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
) -> list[dict]:
    """Starts or resumes the run in ``run_dir`` with the framework its config names: the entry
    point of ``ddnn train``.

    Everything the user can get wrong is checked before the first file is written; the run
    checkpoints every epoch and a resumed run gives the numbers an uninterrupted one would.

    Args:
      config: the run's training configuration (``config.framework`` picks JAX or PyTorch).
      run_dir: a new directory, or one this configuration trained before (resumed).
      progress: where epoch lines and live bars go.
      on_epoch_trained: called with the epoch number after each epoch's step (fault injection).
    Returns:
      The metrics of every epoch trained so far, one dict per epoch (metrics.jsonl's rows).
    """
    return run_trainings([(config, run_dir)], progress=progress, on_epoch_trained=on_epoch_trained)[0]
