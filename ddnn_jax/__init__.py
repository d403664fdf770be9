"""ddnn-jax: distributed deep neural networks with learned offloading, in JAX and Flax.

Use it from Python as ``import ddnn_jax as ddnn``: the names in ``__all__`` are the stage entries
(``ddnn.run_training``, ``ddnn.collect``, ``ddnn.route``, ``ddnn.evaluate``, ``ddnn.report``),
the jobs that compose them (``ddnn.run``, ``ddnn.run_study``, ``ddnn.compare``), their configs,
the run-directory readers, the dataset loader, the model, and the registries a new variant
joins. They load on first use, and the first use configures this process's runtime as the
``ddnn`` command does (persistent compilation cache, deterministic GPU kernels) unless it was
configured already.
``docs/python.md`` walks through them.

The subpackages are the layers, bottom to top; a module imports only from its own layer or
from those below it (``tests/test_layers.py`` holds that):

==========  ====================================================================================
common      errors, progress bars, the XLA runtime (compile cache, determinism), provenance
data        datasets through tfds, offline preparation, image folders, normalisation, augmentation
core        pure compute, arrays and frozen configs in, arrays out: the models, the joint training
            step and compiled epoch, per-sample costs and labels, decision rules and their
            registry, router networks and their vmapped training, curves and paired statistics
rundir      the run directory, the only code that spells a path in it: names, atomic writes and
            locks, records, checkpoints, and the trained artefacts as live objects
stages      one module per ``ddnn`` stage: train, collect, route, evaluate, report, timing
deploy      the edge-cloud deployment over HTTP: wire format, cloud service, edge client, and
            the edge that runs an exported graph without JAX
interop     PyTorch: the reference model, weight conversion both ways, its training step, and
            the torch training backend; the edge half exported to ONNX and LiteRT
jobs        what composes stages: training by either framework, ``ddnn run``, ``ddnn study``,
            ``ddnn compare``, ``ddnn check``
benchmarks  ``ddnn bench``: contenders measured side by side
cli         argparse only; each command builds a config and calls one entry
==========  ====================================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    # stages and jobs
    "run_training": "ddnn_jax.jobs.training",
    "run_trainings": "ddnn_jax.jobs.training",
    "collect": "ddnn_jax.stages.collect",
    "route": "ddnn_jax.stages.route",
    "evaluate": "ddnn_jax.stages.evaluate",
    "report": "ddnn_jax.stages.report",
    "time_inference": "ddnn_jax.stages.timing",
    "run": "ddnn_jax.jobs.run",
    "run_study": "ddnn_jax.jobs.study",
    "aggregate": "ddnn_jax.jobs.study",
    "compare": "ddnn_jax.jobs.compare",
    "check": "ddnn_jax.jobs.check",
    # configs
    "TrainConfig": "ddnn_jax.core.config",
    "RouterConfig": "ddnn_jax.core.router_net",
    "EvaluationConfig": "ddnn_jax.stages.evaluate",
    "InferenceBenchConfig": "ddnn_jax.stages.timing",
    "RunPlan": "ddnn_jax.jobs.run",
    "EdgeConfig": "ddnn_jax.deploy.edge",
    "Progress": "ddnn_jax.common.progress",
    # the run directory
    "RunDir": "ddnn_jax.rundir",
    "StudyDir": "ddnn_jax.rundir",
    "read_run_record": "ddnn_jax.rundir",
    "read_metrics": "ddnn_jax.rundir",
    "read_outputs": "ddnn_jax.rundir",
    "read_family": "ddnn_jax.rundir",
    "read_family_scores": "ddnn_jax.rundir",
    "read_results": "ddnn_jax.rundir",
    "restore_best": "ddnn_jax.rundir",
    "deployed_router": "ddnn_jax.rundir",
    # data and model
    "load_dataset": "ddnn_jax.data",
    "prepare_dataset": "ddnn_jax.data",
    "DDNN": "ddnn_jax.core.models",
    "build_model": "ddnn_jax.core.training",
    "create_train_state": "ddnn_jax.core.training",
    "make_predict_fn": "ddnn_jax.core.training",
    "predict_in_batches": "ddnn_jax.core.training",
    # where variants plug in
    "DecisionRule": "ddnn_jax.core.mechanisms",
    "register_rule": "ddnn_jax.core.mechanisms",
    "REFERENCE_TARGET": "ddnn_jax.core.mechanisms",
    "RouterLoss": "ddnn_jax.core.router_losses",
    "register_loss": "ddnn_jax.core.router_losses",
    "DatasetPolicy": "ddnn_jax.data",
    "DATASETS": "ddnn_jax.data",
    "Family": "ddnn_jax.core.families",
    "FAMILIES": "ddnn_jax.core.families",
    "register_family": "ddnn_jax.core.families",
    "Labelling": "ddnn_jax.core.meta",
    "LABELLINGS": "ddnn_jax.core.meta",
    "register_labelling": "ddnn_jax.core.meta",
    "INPUT_KINDS": "ddnn_jax.core.families",
    "configure_runtime": "ddnn_jax.common.runtime",
}
_RENAMED = {"configure_runtime": "configure"}  # public name -> its name in the defining module

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Loads a public name on first use; the first one configures the runtime."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddnn_jax' has no attribute '{name}'")
    from ddnn_jax.common import runtime

    if name != "configure_runtime":
        runtime.configure_once()
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
