"""The PyTorch training backend: ``ddnn train --backend torch`` trains the reference PyTorch DDNN
(:mod:`ddnn_jax.interop.reference`, PyTorch's own initialisation) by our protocol and writes the
run directory the JAX backend writes, so that every later stage reads it unchanged.

The protocol is the JAX loop's (:mod:`ddnn_jax.stages.train`): the same splits, normalisation,
augmentation, batch size and dropped last batch, the same w (the per-run draw is the JAX one),
Adam, reduce-on-plateau on the validation error of the mean of both exits, and the best epoch by
that mean. What cannot be the same are the random streams: torch's generator, reseeded at every
epoch from (seed, epoch), draws the initialisation, the shuffle, the crops, flips, dropout and a
per-step w.

Each epoch writes metrics.jsonl, the whole PyTorch state (model, Adam, schedule) under
``torch_checkpoints/`` for resuming, and the weights converted to a Flax checkpoint under
``checkpoints/``, where collect, edge and serve find them. That checkpoint's Adam and plateau
state are the initial ones: only its parameters, batch statistics and step are the run's (JAX
does not train a torch run further; ``run_identity`` holds the backend).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common import runtime
from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import EpochBar, Progress
from ddnn_jax.core.training import create_train_state
from ddnn_jax.interop.convert import PARTS, require_torch, torch_to_flax
from ddnn_jax.rundir import TORCH_CHECKPOINTS, RunRecord, atomic_file, checkpoints, write_metrics
from ddnn_jax.stages.train import (
    Trainer,
    TrainJob,
    check_finite,
    epoch_line,
    epoch_row,
    read_history,
)


def derived_seed(seed: int, *stream: object) -> int:
    """A 63-bit torch seed for one use of the run's seed: ("init",) or ("epoch", e)."""
    text = ":".join(map(str, (seed, *stream)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def torch_device() -> str:
    """CUDA where PyTorch sees a GPU, else the CPU."""
    return "cuda" if require_torch().cuda.is_available() else "cpu"


def make_deterministic(device: str, deterministic: bool) -> None:
    """With ``deterministic`` (the runtime's, which ``--nondeterministic`` turns off), the same
    seed gives the same numbers on the same machine, GPUs included (cuBLAS's fixed workspace is
    set with the runtime, ``common.runtime.configure``)."""
    torch = require_torch()
    if device == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def plateau_scheduler(optimizer, factor: float, patience: int):
    """torch's ReduceLROnPlateau counting as ours (:mod:`ddnn_jax.core.optim`): optax lowers the
    rate once ``patience`` epochs in a row did not improve, torch once more than ``patience``
    did, so torch's patience is ours minus one; both improve on a relative 1e-4."""
    torch = require_torch()
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience - 1, threshold=1e-4, threshold_mode="rel"
    )


def _architecture(job: TrainJob) -> dict[str, Any]:
    config = job.config
    return {
        "edge_channels": config.edge_channels,
        "local_hidden": config.local_hidden,
        "cloud_conv_channels": tuple(config.cloud_conv_channels),
        "cloud_dense_features": tuple(config.cloud_dense_features),
        "dropout_rate": config.dropout_rate,
    }


def _nchw(images: np.ndarray, device: str):
    torch = require_torch()
    # a copy: the dataset's arrays are read-only, which torch.from_numpy warns about
    return torch.tensor(images).permute(0, 3, 1, 2).contiguous().to(device)


class _TorchRun:
    """One run's trainer, data on the device, schedule and checkpoints."""

    def __init__(self, job: TrainJob, device: str):
        from ddnn_jax.interop.torch_train import TorchTrainer

        torch = require_torch()
        config, data = job.config, job.data
        self.job, self.device = job, device
        self.trainer = TorchTrainer(
            data.image_shape,
            data.num_classes,
            mean=data.mean,
            std=data.std,
            crop_padding=data.crop_padding,
            horizontal_flip=data.horizontal_flip,
            local_weight=job.local_weight,
            seed=derived_seed(config.seed, "init"),
            device=device,
            learning_rate=config.learning_rate,
            architecture=_architecture(job),
        )
        self.scheduler = plateau_scheduler(
            self.trainer.optimizer, config.plateau_factor, config.plateau_patience
        )
        self.images = _nchw(data.train.images, device)
        self.labels = torch.tensor(data.train.labels, dtype=torch.long, device=device)
        self.steps = len(data.train) // config.batch_size
        self.directory = job.run.torch_checkpoints
        self.manager = checkpoints.manager(job.run.checkpoints, keep=config.keep_checkpoints)
        # the Flax state whose parameters and batch statistics each epoch's weights replace
        self.template = create_train_state(config, data.image_shape, data.num_classes)

    # ---------------------------------------------------------------------------- checkpoints

    def saved_epochs(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        names = (p.stem.removeprefix("epoch-") for p in self.directory.glob("epoch-*.pt"))
        return sorted(int(n) for n in names if n.isdigit())

    def resume(self) -> int:
        """Restores the latest epoch saved both as a torch and as a Flax checkpoint; returns it."""
        torch = require_torch()
        flax_epochs = set(self.manager.all_steps())
        for epoch in reversed(self.saved_epochs()):
            if epoch not in flax_epochs:
                continue
            path = self.directory / f"epoch-{epoch}.pt"
            try:
                saved = torch.load(path, map_location=self.device, weights_only=True)
                self.trainer.model.load_state_dict(saved["model"])
                self.trainer.optimizer.load_state_dict(saved["optimizer"])
                self.scheduler.load_state_dict(saved["scheduler"])
            except Exception as err:  # torch raises many kinds for a damaged file
                raise UsageError(
                    f"{path} is damaged ({type(err).__name__}): move it out of {TORCH_CHECKPOINTS}/ "
                    "to resume from the epoch before, or train in a new --out"
                ) from None
            return epoch
        return 0

    def save(self, epoch: int, selection: float) -> None:
        """The epoch's torch state (for resuming), then its weights as a Flax checkpoint."""
        torch = require_torch()
        self.directory.mkdir(exist_ok=True)
        state = {
            "model": self.trainer.model.state_dict(),
            "optimizer": self.trainer.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
        }
        with atomic_file(self.directory / f"epoch-{epoch}.pt", "wb") as f:
            torch.save(state, f)
        checkpoints.save(self.manager, epoch, self.flax_state(epoch), selection)
        for old in self.saved_epochs()[: -self.job.config.keep_checkpoints]:
            (self.directory / f"epoch-{old}.pt").unlink()

    def flax_state(self, epoch: int):
        """The model's weights in our Flax TrainState (initial Adam and plateau state)."""
        model = self.trainer.model
        state_dicts = {
            part: {k: v.detach().cpu().numpy() for k, v in getattr(model, part).state_dict().items()}
            for part in PARTS
        }
        variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), torch_to_flax(state_dicts))
        return self.template.replace(
            step=epoch * self.steps, params=variables["params"], batch_stats=variables["batch_stats"]
        )

    # ---------------------------------------------------------------------------- one epoch

    def train_epoch(self, epoch: int, on_step: Callable[[int, float], None] | None) -> dict[str, np.ndarray]:
        """One epoch of steps; per-step loss and correct counts as numpy arrays."""
        torch = require_torch()
        batch = self.job.config.batch_size
        torch.manual_seed(derived_seed(self.job.config.seed, "epoch", epoch))
        order = torch.randperm(len(self.labels), device=self.device)[: self.steps * batch]
        self.trainer.model.train()
        results = []
        for i, rows in enumerate(order.view(self.steps, batch)):
            results.append(self.trainer.step(self.images[rows], self.labels[rows]))
            if on_step is not None:
                on_step(i + 1, float(results[-1][0]))
        values = torch.stack(results).cpu().numpy().astype(np.float64)
        return {
            "loss": values[:, 0],
            "correct_local": values[:, 1].astype(np.int64),
            "correct_cloud": values[:, 2].astype(np.int64),
        }

    def validate(self) -> tuple[float, float]:
        """Validation accuracy of the local and the cloud exit, in evaluation mode."""
        torch = require_torch()
        data, model = self.job.data, self.trainer.model
        model.eval()
        correct = np.zeros(2)
        with torch.no_grad():
            for start in range(0, len(data.val), self.job.config.eval_batch_size):
                chunk = slice(start, start + self.job.config.eval_batch_size)
                images = _nchw(data.val.images[chunk], self.device).float() / 255.0
                labels = torch.tensor(data.val.labels[chunk], dtype=torch.long, device=self.device)
                outputs = model((images - self.trainer.mean) / self.trainer.std)
                correct += [float((logits.argmax(-1) == labels).sum()) for logits in outputs]
        model.train()
        return correct[0] / len(data.val), correct[1] / len(data.val)

    def learning_rate(self) -> float:
        return float(self.trainer.optimizer.param_groups[0]["lr"])


def _train_one(job: TrainJob, device: str, progress: Progress, on_epoch_trained) -> list[dict]:
    run = _TorchRun(job, device)
    try:
        resumed = run.resume()
        history = read_history(job.run, resumed)
        config = job.config
        seen = run.steps * config.batch_size
        live = EpochBar(progress, run.steps, config.batch_size)
        live.compiled = True  # eager PyTorch: nothing to compile
        on_step = live.on_step if progress.shows_bars else None
        for epoch in range(resumed + 1, config.epochs + 1):
            started = time.perf_counter()
            rate = run.learning_rate()
            live.open(f"epoch {epoch}/{config.epochs}")
            try:
                metrics = run.train_epoch(epoch, on_step)
            finally:
                live.close()
            if on_epoch_trained is not None:
                on_epoch_trained(epoch)
            check_finite(metrics["loss"], first_step=(epoch - 1) * run.steps + 1, epoch=epoch)
            val_local, val_cloud = run.validate()
            selection = (val_local + val_cloud) / 2
            run.scheduler.step(1.0 - selection)
            row = epoch_row(epoch, metrics, seen, val_local, val_cloud, rate, started)
            history.append(row)
            write_metrics(job.run, history)
            run.save(epoch, selection)
            progress.note(epoch_line(row, config.epochs, seen))
        return history
    finally:
        run.manager.close()


def train_jobs(
    jobs: Sequence[TrainJob],
    *,
    together: bool = False,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
) -> list[list[dict]]:
    """Trains (or resumes) every job, one after another, on CUDA where present; ``together``
    has no meaning here (each run is its own PyTorch loop)."""
    del together
    device = torch_device()
    make_deterministic(device, runtime.configure_once().deterministic)
    return [_train_one(job, device, progress, on_epoch_trained) for job in jobs]


def describe(record: RunRecord) -> RunRecord:
    """config.json of a torch run: where PyTorch trained it, and torch's version."""
    torch = require_torch()
    device = torch_device()
    where = {  # the JAX runtime's record (its 'deterministic' is the torch backend's too), and torch's
        **(record.runtime or {}),
        "torch_device": device,
        "torch_device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    versions = {**record.versions, "torch": torch.__version__}
    return dataclasses.replace(record, backend=f"torch-{device}", versions=versions, runtime=where)


TRAINER = Trainer(name="torch", train_jobs=train_jobs, describe=describe)
