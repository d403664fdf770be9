"""The pieces every ``ddnn`` command is parsed with: argparse value types, the parser and help
classes, and the flag groups that several commands share (data, training, routers, the plan of
``ddnn run``, the XLA runtime). Each default is read off the config dataclass that owns it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddnn_jax.cli.edge_flags import integer, number  # the types every command shares
from ddnn_jax.common import runtime
from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.config import COTRAIN_MODES, FRAMEWORKS, TrainConfig
from ddnn_jax.core.guarantees import GUARANTEES, Guarantee
from ddnn_jax.core.models import CONV_CHOICES, PRECISIONS
from ddnn_jax.core.router_net import DEPTH_PRESETS, RouterConfig
from ddnn_jax.data import DATASETS
from ddnn_jax.jobs.run import RunPlan

DEFAULTS = TrainConfig()
# The depth preset of RouterConfig's default hidden widths.
DEFAULT_DEPTH = next(depth for depth, hidden in DEPTH_PRESETS.items() if hidden == RouterConfig.hidden)


class Parser(argparse.ArgumentParser):
    """Raises a UsageError (one line, exit 2) instead of printing the usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def parse_known_args(self, args=None, namespace=None):
        # argparse turns '--flag=--' into an empty list instead of the value '--' (or an error)
        for arg in sys.argv[1:] if args is None else args:
            flag, equals, value = str(arg).partition("=")
            if flag.startswith("--") and equals and value == "--":
                self.error(f"argument {flag}: '--' is not a value")
        return super().parse_known_args(args, namespace)


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default after its sentence, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


def numbers(text: str) -> tuple[float, ...]:
    """'0.1,0.2' -> (0.1, 0.2); 'none' -> (); anything else without a number is refused."""
    if text.strip().lower() == "none":
        return ()
    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (or 'none'), got '{text}'")
    return tuple(number(part) for part in parts)


def names(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(","))
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got '{text}'")
    return parts


def seeds(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds such as 0,1,2, got '{text}'")
    return tuple(integer(part) for part in parts)


def grid_text(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def add_run_dir(command: argparse.ArgumentParser) -> None:
    command.add_argument("--run", required=True, type=Path, help="run directory")


def add_guarantee_flags(command: argparse.ArgumentParser, kind: str | None = Guarantee.kind) -> None:
    """What a guaranteed threshold promises (core.guarantees); ``kind`` None: no guarantee
    unless asked for."""
    command.add_argument(
        "--guarantee",
        choices=GUARANTEES,
        default=kind,
        help="local-rate: local rate >= L0 - epsilon; accuracy-drop: accuracy lost against "
        "cloud-only <= epsilon, keeping as many local as allowed"
        + ("" if kind else " (default: the threshold calibrated on validation, no guarantee)"),
    )
    command.add_argument(
        "--epsilon", type=number, default=Guarantee.epsilon, help="the guarantee's slack or allowed drop"
    )
    command.add_argument(
        "--delta",
        type=number,
        default=Guarantee.delta,
        help="the promise may fail with at most this probability over the validation draw",
    )


def add_quiet(command: argparse.ArgumentParser) -> None:
    """--quiet and the runtime flags: every command that prints progress takes them."""
    command.add_argument(
        "--quiet", action="store_true", help="print stage lines and results only: no per-epoch lines, no bars"
    )
    add_runtime_flags(command)


def add_runtime_flags(command: argparse.ArgumentParser) -> None:
    """How XLA runs: every command that computes takes these."""
    command.add_argument(
        "--compile-cache",
        default="default",  # runtime.configure's own word for this choice
        metavar="DIR|off",
        help=f"persistent XLA compilation cache: a later run of the same shapes compiles nothing "
        f"(default: JAX's JAX_COMPILATION_CACHE_DIR if set, else {runtime.DEFAULT_CACHE_DIR})",
    )
    command.add_argument(
        "--nondeterministic",
        action="store_true",
        help="let XLA use faster GPU kernels whose sums vary from run to run (no effect on CPU)",
    )
    processes = command.add_argument_group(
        "several processes (one program over the devices of all; give the same command to each)"
    )
    processes.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process program; what the flags below leave out comes from the "
        "cluster's environment (SLURM, Open MPI, TPU pods)",
    )
    processes.add_argument(
        "--coordinator",
        default=runtime.Processes.coordinator,
        metavar="HOST:PORT",
        help="address of process 0",
    )
    processes.add_argument(
        "--num-processes", type=integer, default=runtime.Processes.count, help="processes in the program"
    )
    processes.add_argument(
        "--process-id", type=integer, default=runtime.Processes.index, help="this process's index, from 0"
    )


def add_data_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dataset", default=DEFAULTS.dataset, help="one of " + ", ".join(DATASETS))
    command.add_argument(
        "--data-dir",
        default=DEFAULTS.data_dir,
        help="tfds data directory (default: tfds's, ~/tensorflow_datasets)",
    )
    command.add_argument(
        "--download",
        action="store_true",
        help="let tfds download the dataset if it is not prepared (needs network)",
    )


def add_training_flags(train: argparse.ArgumentParser, study: bool = False) -> None:
    """The flags of one training run; a study gives --seeds instead of --seed."""
    add_data_flags(train)
    if study:
        train.add_argument(
            "--out", type=Path, default=None, help="study directory; an existing study there is resumed"
        )
    else:
        train.add_argument(
            "--out", required=True, type=Path, help="run directory; an existing run there is resumed"
        )
    train.add_argument("--epochs", type=integer, default=DEFAULTS.epochs, help="epochs of joint training")
    train.add_argument(
        "--batch-size",
        type=integer,
        default=DEFAULTS.batch_size,
        help="training batch (a multiple of the device count)",
    )
    train.add_argument(
        "--local-weight",
        default=DEFAULTS.local_weight,
        help="w of w*CE_local+(1-w)*CE_cloud: per-run (w ~ U(0,1) from the seed), "
        "per-batch, or a number in [0, 1]",
    )
    if not study:
        train.add_argument(
            "--seed",
            type=integer,
            default=DEFAULTS.seed,
            help="seeds the split, initialisation, w, shuffling, dropout, augmentation",
        )
    train.add_argument(
        "--limit-train",
        type=integer,
        default=DEFAULTS.limit_train,
        help="train on the first N training images only (default: all)",
    )
    train.add_argument(
        "--limit-eval",
        type=integer,
        default=DEFAULTS.limit_eval,
        help="validate and test on the first N images of each only (default: all)",
    )
    train.add_argument(
        "--cotrain-router",
        choices=COTRAIN_MODES,
        default=DEFAULTS.cotrain_router,
        help="train a router inside the training, on each batch's live costs (docs/variants.md): "
        "detached (the DDNN trains as without it) or joint (its loss reaches the edge)",
    )
    train.add_argument(
        "--warmup",
        dest="cotrain_warmup",
        type=integer,
        default=DEFAULTS.cotrain_warmup,
        help="epochs before the co-trained router's loss counts",
    )
    train.add_argument(
        "--cotrain-weight",
        type=number,
        default=DEFAULTS.cotrain_weight,
        help="weight of the co-trained router's loss on the edge (joint only)",
    )
    train.add_argument(
        "--edge-channels",
        type=integer,
        default=DEFAULTS.edge_channels,
        help="channels of the edge's convolution, so of z (lower: a weaker edge)",
    )
    train.add_argument(
        "--local-hidden",
        type=integer,
        default=DEFAULTS.local_hidden,
        help="hidden units of the local exit's classifier",
    )
    train.add_argument(
        "--conv",
        choices=CONV_CHOICES,
        default=DEFAULTS.conv,
        help="convolution: im2col (a matmul, fast on CPU), xla, or auto by backend",
    )
    train.add_argument(
        "--backend",
        dest="framework",
        choices=FRAMEWORKS,
        default=DEFAULTS.framework,
        help="what trains the DDNN: jax, or torch (the reference PyTorch model; CUDA where present)",
    )
    train.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default=DEFAULTS.precision,
        help="compute dtype; bf16 keeps parameters, optimizer state and the loss in fp32",
    )
    add_quiet(train)


def add_router_flags(command: argparse.ArgumentParser, router_seed: int = RouterConfig.seed) -> None:
    command.add_argument(
        "--inputs",
        type=names,
        default=None,
        help="comma-separated router inputs: logits, logits+, features, "
        "features-cnn, images (route: logits; run: all but the CNNs on CPU)",
    )
    command.add_argument(
        "--grid",
        type=numbers,
        default=None,
        help=f"comma-separated local-rate targets L0 in [0, 1] (default: {grid_text(RouterConfig.targets)})",
    )
    command.add_argument(
        "--router-seed",
        type=integer,
        default=router_seed,
        help="seeds the routers' initialisation, shuffling and dropout",
    )


def add_plan_flags(command: argparse.ArgumentParser, sweep_weights: tuple[float, ...]) -> None:
    """What ``ddnn run`` (or each run of a study) makes besides the DDNN: routers, ablations, sweep."""
    add_router_flags(command, router_seed=RunPlan.router_seed)
    command.add_argument(
        "--families",
        type=names,
        default=None,
        help="comma-separated router families, or the sets default (a plain run's), variants "
        "(docs/variants.md) and all; a set's families are those whose input is in --inputs",
    )
    command.add_argument(
        "--no-ablations",
        action="store_true",
        help="skip the oracle-label, depth, dropout and score-target router studies",
    )
    command.add_argument(
        "--no-inference-timing",
        action="store_true",
        help="skip timing inference per mechanism (Fig. 6.5, bench_inference.json)",
    )
    command.add_argument(
        "--sweep-weights",
        type=numbers,
        default=sweep_weights,
        help="local weights of the short Fig. 6.17 runs, comma-separated, or none",
    )


def add_run_flags(command: argparse.ArgumentParser) -> None:
    """The flags of ``ddnn run`` (and of ``ddnn bench run``, which times it)."""
    add_training_flags(command)
    add_plan_flags(command, RunPlan.sweep_weights)


def run_parser() -> Parser:
    """A parser of ``ddnn run``'s flags alone, as ``ddnn bench run`` takes them."""
    parser = Parser(prog="ddnn run", formatter_class=Help)
    add_run_flags(parser)
    return parser
