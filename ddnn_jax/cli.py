"""``ddnn``: one thin command per stage. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ddnn_jax.errors import TrainingDiverged, UsageError

EXIT_USAGE = 2
EXIT_FAILURE = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ddnn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="jointly train the edge and cloud exits")
    train.add_argument("--dataset", default="fashion_mnist",
                       help="fashion_mnist (default), mnist, cifar10, cifar100, svhn_cropped")
    train.add_argument("--out", required=True, type=Path, help="run directory (resumed if it exists)")
    train.add_argument("--epochs", type=_integer, default=20)
    train.add_argument("--batch-size", type=_integer, default=128)
    train.add_argument("--local-weight", default="per-run",
                       help="w of w*CE_local+(1-w)*CE_cloud: per-run (default), per-batch, or a number in [0, 1]")
    train.add_argument("--seed", type=_integer, default=0)
    train.add_argument("--data-dir", default=None, help="tfds data directory")
    train.add_argument("--download", action="store_true",
                       help="let tfds download the dataset if it is not prepared (needs network)")
    train.add_argument("--limit-train", type=_integer, default=None,
                       help="train on the first N training examples only")

    collect = commands.add_parser("collect", help="write per-sample outputs of the best weights")
    collect.add_argument("--run", required=True, type=Path, help="run directory")
    collect.add_argument("--features", action="store_true", help="also store the edge features z")
    return parser


def _train(args) -> None:
    from ddnn_jax.config import TrainConfig
    from ddnn_jax.train import run_training

    config = TrainConfig(
        dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
        local_weight=args.local_weight, seed=args.seed, data_dir=args.data_dir,
        limit_train=args.limit_train, download=args.download,
    )
    history = run_training(config, args.out)
    print(f"trained {args.out}: {len(history)} of {config.epochs} epochs done")


def _collect(args) -> None:
    from ddnn_jax.collect import collect

    for name, path in collect(args.run, with_features=args.features).items():
        print(f"{name}: {path}")


def main(argv: list[str] | None = None) -> int:
    # TensorFlow only reads prepared data for us; its and tfds's log lines are noise on stderr.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
        {"train": _train, "collect": _collect}[args.command](args)
    except UsageError as err:
        print(f"ddnn: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as err:
        print(f"ddnn: failed: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("ddnn: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
