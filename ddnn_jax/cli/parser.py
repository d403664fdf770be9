"""The ``ddnn`` parser: one ``_add_X`` per subcommand (its flags, help and defaults), and
``build_parser``, which puts them together in the order ``ddnn --help`` lists them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddnn_jax.cli.bench import BENCHMARKS
from ddnn_jax.cli.flags import (
    DEFAULT_DEPTH,
    DEFAULTS,
    Help,
    Parser,
    add_data_flags,
    add_guarantee_flags,
    add_plan_flags,
    add_quiet,
    add_router_flags,
    add_run_dir,
    add_run_flags,
    add_training_flags,
    integer,
    number,
    numbers,
    seeds,
)
from ddnn_jax.cli.parser_deploy import add_deployment
from ddnn_jax.core.bottleneck import BITS, STRIDES, BottleneckConfig
from ddnn_jax.core.families import OBJECTIVES
from ddnn_jax.core.meta import LABELLINGS, labellings_for
from ddnn_jax.core.router_losses import LOSSES
from ddnn_jax.core.router_net import DEPTH_PRESETS, FIT_SPLITS, MAX_EPOCHS, RouterConfig
from ddnn_jax.stages.evaluate import EvaluationConfig

DESCRIPTION = "``ddnn``: one thin command per stage. Bad input exits 2 with one line on stderr."


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="jointly train the edge and cloud exits", formatter_class=Help)
    add_training_flags(train)


def _add_prepare(commands) -> None:
    prepare = commands.add_parser(
        "prepare",
        formatter_class=Help,
        help="prepare a dataset (needs TensorFlow) so that hosts without it can read it",
    )
    add_data_flags(prepare)
    prepare.add_argument(
        "--verbose", action="store_true", help="let TensorFlow's native log lines through (debugging)"
    )


def _add_collect(commands) -> None:
    collect = commands.add_parser(
        "collect", help="write per-sample outputs of the best weights", formatter_class=Help
    )
    add_run_dir(collect)
    collect.add_argument("--features", action="store_true", help="also store the edge features z")
    add_quiet(collect)


def _add_route(commands) -> None:
    route = commands.add_parser(
        "route", help="train router families on a run's outputs", formatter_class=Help
    )
    add_run_dir(route)
    add_router_flags(route)
    route.add_argument(
        "--objective",
        default=RouterConfig.objective,
        choices=OBJECTIVES,
        help="grid: one router per target (the thesis); score: one router whose score is "
        "thresholded for every target on validation; budget: one router with the target as an input",
    )
    route.add_argument(
        "--loss",
        default=RouterConfig.loss,
        choices=tuple(LOSSES),
        help="what the routers minimise (default: bce for grid, squared for score)",
    )
    route.add_argument(
        "--fit-split",
        default=RouterConfig.fit_split,
        choices=FIT_SPLITS,
        help="whose meta-data the routers learn: the train split's, val's (cross-fitted on its folds), "
        "or oof (the train split's out-of-fold outputs, which 'ddnn run --families logits-oof' makes)",
    )
    route.add_argument(
        "--bottleneck",
        default=RouterConfig.bottleneck,
        metavar="NAME",
        help="price offloading through the run's bottleneck NAME: the cloud's correctness behind it",
    )
    route.add_argument(
        "--byte-cost",
        type=number,
        default=RouterConfig.byte_cost,
        metavar="LAMBDA",
        help="benefit lost per kB of a sample's entropy-coded payload (--bottleneck): the "
        "transmission cost of offloading it",
    )
    route.add_argument(
        "--focal-gamma",
        type=number,
        default=RouterConfig.focal_gamma,
        help="the focal loss's exponent (--loss focal; 0 is BCE)",
    )
    route.add_argument(
        "--labels",
        default=None,
        choices=tuple(LABELLINGS),
        help=f"grid: {', '.join(labellings_for('grid'))} (cost: B >= B*(L0), the default; oracle: "
        f"correctness first); score: {', '.join(labellings_for('score'))} (benefit: regress B, "
        "the default; gain: regress cloud_correct - local_correct). See docs/variants.md",
    )
    route.add_argument(
        "--depth",
        type=integer,
        default=DEFAULT_DEPTH,
        choices=sorted(DEPTH_PRESETS),
        help="Dense layers of the router",
    )
    route.add_argument(
        "--dropout", type=number, default=RouterConfig.dropout_rate, help="dropout after each hidden layer"
    )
    route.add_argument(
        "--max-epochs",
        type=integer,
        default=RouterConfig.max_epochs,
        help=f"epochs at most per target, up to {MAX_EPOCHS:,} (early stopping may end sooner)",
    )
    route.add_argument(
        "--name", default=None, help="directory under routers/ (one input only; default: from the inputs)"
    )
    add_quiet(route)


def _add_bottleneck(commands) -> None:
    command = commands.add_parser(
        "bottleneck",
        help="fine-tune a learned bottleneck at the split on a trained run -> RUN_DIR/bottlenecks/",
        formatter_class=Help,
    )
    add_run_dir(command)
    command.add_argument(
        "--channels", type=integer, default=BottleneckConfig.channels, help="channels k of the codes"
    )
    command.add_argument(
        "--bits", type=integer, choices=BITS, default=BottleneckConfig.bits, help="bits per code value"
    )
    command.add_argument(
        "--stride",
        type=integer,
        choices=STRIDES,
        default=BottleneckConfig.stride,
        help="spatial reduction of z (2: half its height and width)",
    )
    command.add_argument("--epochs", type=integer, default=BottleneckConfig.epochs, help="fine-tuning epochs")
    command.add_argument(
        "--batch-size", type=integer, default=BottleneckConfig.batch_size, help="images per fine-tuning step"
    )
    command.add_argument(
        "--learning-rate", type=number, default=BottleneckConfig.learning_rate, help="Adam's learning rate"
    )
    command.add_argument(
        "--seed", type=integer, default=BottleneckConfig.seed, help="initialisation and batch order"
    )
    add_quiet(command)


def _add_evaluate_report(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score every mechanism -> results.json", formatter_class=Help
    )
    add_run_dir(evaluate)
    evaluate.add_argument(
        "--tau",
        type=number,
        default=EvaluationConfig.border_tau,
        help="|B| below which a sample counts as borderline",
    )
    evaluate.add_argument(
        "--thresholds",
        type=Path,
        default=None,
        help="JSON file {family: [threshold per target]}: decide with these (a deployed router's) "
        "instead of the thresholds calibrated on validation",
    )
    add_guarantee_flags(evaluate)
    report = commands.add_parser(
        "report", help="figures and report.md from results.json", formatter_class=Help
    )
    add_run_dir(report)
    check = commands.add_parser(
        "check",
        help="verify every artefact of a run against what it was made from; exit 0 only if all is ok",
        formatter_class=Help,
    )
    add_run_dir(check)
    check.add_argument(
        "--clean",
        action="store_true",
        help="first remove what killed writes left (temporary files, folders)",
    )


def _add_interop(commands) -> None:
    importer = commands.add_parser(
        "import-torch", formatter_class=Help, help="make a run directory from PyTorch reference weights"
    )
    importer.add_argument(
        "--feature-extractor", required=True, type=Path, help="LocalFeatureExtractor state dict (.pth)"
    )
    importer.add_argument(
        "--local-classifier", required=True, type=Path, help="LocalClassifier state dict (.pth)"
    )
    importer.add_argument("--cloud", required=True, type=Path, help="CloudCNN state dict (.pth)")
    importer.add_argument("--out", required=True, type=Path, help="new run directory")
    importer.add_argument(
        "--mean",
        type=numbers,
        default=None,
        help="per-channel mean subtracted from x/255 in training, comma-separated "
        "(default: the dataset's training statistics)",
    )
    importer.add_argument(
        "--std",
        type=numbers,
        default=None,
        help="per-channel std dividing it (default: the training statistics)",
    )
    importer.add_argument("--seed", type=integer, default=DEFAULTS.seed, help="seeds the train/val split")
    importer.add_argument(
        "--limit-train",
        type=integer,
        default=None,
        help="collect only the first N training images (the routers' training set)",
    )
    importer.add_argument(
        "--limit-eval",
        type=integer,
        default=None,
        help="validate and collect on the first N validation and N test images only (default: all)",
    )
    add_data_flags(importer)
    exporter = commands.add_parser(
        "export-torch", formatter_class=Help, help="write a run's best weights as PyTorch state dicts"
    )
    add_run_dir(exporter)
    exporter.add_argument("--out", required=True, type=Path, help="new or empty directory for the .pth files")
    exporter.add_argument("--force", action="store_true", help="write into a non-empty --out")


def _add_bench(commands) -> None:
    bench = commands.add_parser(
        "bench", help="benchmarks, one JSON line per measurement", formatter_class=Help
    )
    bench.add_argument(
        "benchmark",
        choices=sorted(BENCHMARKS),
        help="train (vs PyTorch), run (each stage of ddnn run), inference (Fig. 6.5), router (grid), conv",
    )
    bench.add_argument(
        "options", nargs=argparse.REMAINDER, help="the benchmark's own flags (ddnn bench NAME --help)"
    )


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="train, collect, route, evaluate and report", formatter_class=Help)
    add_run_flags(run)


def _add_study(commands) -> None:
    study = commands.add_parser(
        "study",
        formatter_class=Help,
        help="one full run per seed and their aggregate with intervals (or --aggregate runs made elsewhere)",
    )
    study.add_argument("--seeds", type=seeds, default=None, help="comma-separated seeds, one run each")
    study.add_argument(
        "--aggregate",
        type=Path,
        default=None,
        metavar="STUDY_DIR",
        help="only aggregate the runs already under this study directory (made elsewhere)",
    )
    add_training_flags(study, study=True)
    # Fig. 6.17 comes from the seeds' own full runs, so no short sweep runs by default.
    add_plan_flags(study, ())


def _add_compare(commands) -> None:
    from ddnn_jax.jobs.compare import DEFAULT_MARGIN

    compare = commands.add_parser(
        "compare",
        formatter_class=Help,
        help="are two studies differing in one field (the backend, say) equivalent within a margin?",
    )
    compare.add_argument("a", type=Path, metavar="A", help="a study directory (its seeds' runs)")
    compare.add_argument("b", type=Path, metavar="B", help="the study to compare with A")
    compare.add_argument(
        "--margin", type=number, default=DEFAULT_MARGIN, help="equivalence margin in accuracy points"
    )
    compare.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where compare.json/.md/.png go (default: A's parent/compare_A_vs_B)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ddnn", description=DESCRIPTION, formatter_class=Help)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (
        _add_run,
        _add_study,
        _add_compare,
        _add_prepare,
        _add_train,
        _add_collect,
        _add_route,
        _add_bottleneck,
        _add_evaluate_report,
        add_deployment,
        _add_interop,
        _add_bench,
    ):
        add(commands)
    return parser
