"""The per-sample outputs of a trained DDNN on one data split, as arrays in memory (the run
directory stores them as outputs/{split}.npz)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SplitOutputs:
    """One split's per-sample outputs of the DDNN in evaluation mode, made from the checkpoint
    of ``epoch``."""

    local_logits: np.ndarray  # [N, C] float32
    cloud_logits: np.ndarray  # [N, C] float32
    labels: np.ndarray  # [N] int32
    epoch: int  # the checkpoint they come from (the best on validation)
    features: np.ndarray | None = None  # z, [N, H, W, C] float32, with ``collect --features``
    checkpoint: str = ""  # rundir.checkpoints.state_digest of those weights ("" if not known)

    def __len__(self) -> int:
        return len(self.labels)
