"""``ddnn``: one thin command per stage. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import math
import os
import sys
from pathlib import Path

from ddnn_jax.common import runtime
from ddnn_jax.common.errors import TrainingDiverged, UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.config import TrainConfig, parse_local_weight
from ddnn_jax.core.families import LABEL_KINDS, OBJECTIVES, SCORE_KINDS, input_kind
from ddnn_jax.core.labels import check_targets
from ddnn_jax.core.models import CONV_CHOICES, PRECISIONS
from ddnn_jax.core.router_net import DEFAULT_TARGETS, DEPTH_PRESETS, RouterConfig
from ddnn_jax.jobs.run import RunPlan, run
from ddnn_jax.rundir.records import RunDir, read_json
from ddnn_jax.stages.collect import collect
from ddnn_jax.stages.evaluate import EvaluationConfig, evaluate
from ddnn_jax.stages.report import report
from ddnn_jax.stages.route import route
from ddnn_jax.stages.train import run_training

EXIT_USAGE = 2
EXIT_FAILURE = 1
BENCHMARKS = {
    "train": "train",
    "run": "run",
    "inference": "inference",
    "router": "router_grid",
    "conv": "conv_in_loop",
}
DEFAULTS = TrainConfig()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default after its sentence, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None


def _numbers(text: str) -> tuple[float, ...]:
    """'0.1,0.2' -> (0.1, 0.2); 'none' -> (); anything else without a number is refused."""
    if text.strip().lower() == "none":
        return ()
    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (or 'none'), got '{text}'")
    return tuple(_number(part) for part in parts)


def _names(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(","))
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got '{text}'")
    return parts


def _grid(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _add_quiet(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--quiet", action="store_true", help="print stage lines and results only: no per-epoch lines, no bars"
    )
    _add_runtime_flags(command)


def _add_runtime_flags(command: argparse.ArgumentParser) -> None:
    """How XLA runs: every command that computes takes these."""
    command.add_argument(
        "--compile-cache",
        default="default",
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
    processes.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="address of process 0")
    processes.add_argument("--num-processes", type=_integer, default=None, help="processes in the program")
    processes.add_argument("--process-id", type=_integer, default=None, help="this process's index, from 0")


def _add_data_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--dataset", default=DEFAULTS.dataset, help="fashion_mnist, mnist, cifar10, cifar100 or svhn_cropped"
    )
    command.add_argument(
        "--data-dir", default=None, help="tfds data directory (default: tfds's, ~/tensorflow_datasets)"
    )
    command.add_argument(
        "--download",
        action="store_true",
        help="let tfds download the dataset if it is not prepared (needs network)",
    )


def _add_training_flags(train: argparse.ArgumentParser, study: bool = False) -> None:
    """The flags of one training run; a study gives --seeds instead of --seed."""
    _add_data_flags(train)
    if study:
        train.add_argument(
            "--out", type=Path, default=None, help="study directory; an existing study there is resumed"
        )
    else:
        train.add_argument(
            "--out", required=True, type=Path, help="run directory; an existing run there is resumed"
        )
    train.add_argument("--epochs", type=_integer, default=DEFAULTS.epochs, help="epochs of joint training")
    train.add_argument(
        "--batch-size",
        type=_integer,
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
            type=_integer,
            default=DEFAULTS.seed,
            help="seeds the split, initialisation, w, shuffling, dropout, augmentation",
        )
    train.add_argument(
        "--limit-train",
        type=_integer,
        default=None,
        help="train on the first N training images only (default: all)",
    )
    train.add_argument(
        "--conv",
        choices=CONV_CHOICES,
        default=DEFAULTS.conv,
        help="convolution: im2col (a matmul, fast on CPU), xla, or auto by backend",
    )
    train.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default=DEFAULTS.precision,
        help="compute dtype; bf16 keeps parameters, optimizer state and the loss in fp32",
    )
    _add_quiet(train)


def _add_router_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--inputs",
        type=_names,
        default=None,
        help="comma-separated router inputs: logits, logits+, features, "
        "features-cnn, images (route: logits; run: all but the CNNs on CPU)",
    )
    command.add_argument(
        "--grid",
        type=_numbers,
        default=None,
        help=f"comma-separated local-rate targets L0 in [0, 1] (default: {_grid(DEFAULT_TARGETS)})",
    )
    command.add_argument(
        "--router-seed",
        type=_integer,
        default=RouterConfig.seed,
        help="seeds the routers' initialisation, shuffling and dropout",
    )


def _run_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument("--run", required=True, type=Path, help="run directory")


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="jointly train the edge and cloud exits", formatter_class=_Help)
    _add_training_flags(train)


def _add_prepare(commands) -> None:
    prepare = commands.add_parser(
        "prepare",
        formatter_class=_Help,
        help="prepare a dataset (needs TensorFlow) so that hosts without it can read it",
    )
    _add_data_flags(prepare)
    prepare.add_argument(
        "--verbose", action="store_true", help="let TensorFlow's native log lines through (debugging)"
    )


def _add_collect(commands) -> None:
    collect = commands.add_parser(
        "collect", help="write per-sample outputs of the best weights", formatter_class=_Help
    )
    _run_flag(collect)
    collect.add_argument("--features", action="store_true", help="also store the edge features z")
    _add_quiet(collect)


def _add_route(commands) -> None:
    route = commands.add_parser(
        "route", help="train router families on a run's outputs", formatter_class=_Help
    )
    _run_flag(route)
    _add_router_flags(route)
    route.add_argument(
        "--objective",
        default="grid",
        choices=OBJECTIVES,
        help="grid: one router per target (the thesis); score: one router whose score is "
        "thresholded for every target on validation",
    )
    route.add_argument(
        "--labels",
        default=None,
        choices=LABEL_KINDS + SCORE_KINDS,
        help="grid: cost (B >= B*(L0), default) or oracle (correctness first); score: benefit "
        "(regress B, default) or gain (regress cloud_correct - local_correct)",
    )
    route.add_argument(
        "--depth", type=_integer, default=5, choices=sorted(DEPTH_PRESETS), help="Dense layers of the router"
    )
    route.add_argument(
        "--dropout", type=_number, default=RouterConfig.dropout_rate, help="dropout after each hidden layer"
    )
    route.add_argument(
        "--max-epochs",
        type=_integer,
        default=RouterConfig.max_epochs,
        help="epochs at most per target (early stopping may end sooner)",
    )
    route.add_argument(
        "--name", default=None, help="directory under routers/ (one input only; default: from the inputs)"
    )
    _add_quiet(route)


def _add_evaluate_report(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score every mechanism -> results.json", formatter_class=_Help
    )
    _run_flag(evaluate)
    evaluate.add_argument(
        "--tau",
        type=_number,
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
    report = commands.add_parser(
        "report", help="figures and report.md from results.json", formatter_class=_Help
    )
    _run_flag(report)
    check = commands.add_parser(
        "check",
        help="verify every artefact of a run against what it was made from; exit 0 only if all is ok",
        formatter_class=_Help,
    )
    _run_flag(check)


def _add_interop(commands) -> None:
    importer = commands.add_parser(
        "import-torch", formatter_class=_Help, help="make a run directory from PyTorch reference weights"
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
        type=_numbers,
        default=None,
        help="per-channel mean subtracted from x/255 in training, comma-separated "
        "(default: the dataset's training statistics)",
    )
    importer.add_argument(
        "--std",
        type=_numbers,
        default=None,
        help="per-channel std dividing it (default: the training statistics)",
    )
    importer.add_argument("--seed", type=_integer, default=0, help="seeds the train/val split")
    importer.add_argument(
        "--limit-train",
        type=_integer,
        default=None,
        help="collect only the first N training images (the routers' training set)",
    )
    _add_data_flags(importer)
    exporter = commands.add_parser(
        "export-torch", formatter_class=_Help, help="write a run's best weights as PyTorch state dicts"
    )
    _run_flag(exporter)
    exporter.add_argument("--out", required=True, type=Path, help="new or empty directory for the .pth files")
    exporter.add_argument("--force", action="store_true", help="write into a non-empty --out")


def _add_bench(commands) -> None:
    bench = commands.add_parser(
        "bench", help="benchmarks, one JSON line per measurement", formatter_class=_Help
    )
    bench.add_argument(
        "benchmark",
        choices=sorted(BENCHMARKS),
        help="train (vs PyTorch), run (each stage of ddnn run), inference (Fig. 6.5), router (grid), conv",
    )
    bench.add_argument(
        "options", nargs=argparse.REMAINDER, help="the benchmark's own flags (ddnn bench NAME --help)"
    )


def _add_plan_flags(command: argparse.ArgumentParser, sweep_weights: tuple[float, ...]) -> None:
    _add_router_flags(command)
    command.add_argument(
        "--no-ablations",
        action="store_true",
        help="skip the oracle-label, depth, dropout and score-target router studies",
    )
    command.add_argument(
        "--sweep-weights",
        type=_numbers,
        default=sweep_weights,
        help="local weights of the short Fig. 6.17 runs, comma-separated, or none",
    )


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="train, collect, route, evaluate and report", formatter_class=_Help)
    _add_training_flags(run)
    _add_plan_flags(run, RunPlan.sweep_weights)


def _seeds(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds such as 0,1,2, got '{text}'")
    return tuple(_integer(part) for part in parts)


def _add_study(commands) -> None:
    study = commands.add_parser(
        "study",
        formatter_class=_Help,
        help="one full run per seed and their aggregate with intervals (or --aggregate runs made elsewhere)",
    )
    study.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds, one run each")
    study.add_argument(
        "--aggregate",
        type=Path,
        default=None,
        metavar="STUDY_DIR",
        help="only aggregate the runs already under this study directory (made elsewhere)",
    )
    _add_training_flags(study, study=True)
    # Fig. 6.17 comes from the seeds' own full runs, so no short sweep runs by default.
    _add_plan_flags(study, ())


def _add_split(commands) -> None:
    from ddnn_jax.deploy.cloud import DEFAULT_MAX_BATCH
    from ddnn_jax.deploy.edge import MECHANISMS, EdgeConfig
    from ddnn_jax.deploy.wire import WIRES

    serve = commands.add_parser(
        "serve", help="serve a run's cloud half over HTTP (stops cleanly on SIGTERM)", formatter_class=_Help
    )
    _run_flag(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_integer, default=0, help="port to listen on (0: a free one)")
    serve.add_argument(
        "--max-batch",
        type=_integer,
        default=DEFAULT_MAX_BATCH,
        help="samples per request at most; sets the request size limit",
    )
    _add_runtime_flags(serve)
    edge = commands.add_parser(
        "edge",
        help="run a run's edge half on its test split against 'ddnn serve' -> edge_report.json",
        formatter_class=_Help,
    )
    _run_flag(edge)
    edge.add_argument("--server", required=True, help="the address 'ddnn serve' printed")
    edge.add_argument("--mechanism", choices=MECHANISMS, default=EdgeConfig.mechanism, help="decision rule")
    edge.add_argument(
        "--target",
        type=_number,
        default=EdgeConfig.target,
        help="L0: the local rate the rule was calibrated for",
    )
    edge.add_argument("--wire", choices=WIRES, default=EdgeConfig.wire, help="how z travels")
    edge.add_argument(
        "--batch",
        type=_integer,
        default=EdgeConfig.batch,
        help="samples the edge processes and offloads together",
    )
    edge.add_argument("--family", default=EdgeConfig.family, help="router family (--mechanism router)")
    edge.add_argument(
        "--timeout",
        type=_number,
        default=EdgeConfig.timeout_s,
        help="seconds to wait for the cloud before answering locally",
    )
    edge.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="run on the images in DIR (or in its class folders 0 .. C-1, which label them) "
        "instead of the run's test split",
    )
    edge.add_argument("--limit", type=_integer, default=None, help="the first N images only")
    edge.add_argument(
        "--out", type=Path, default=None, help="report path (default: RUN_DIR/edge/NAME/edge_report.json)"
    )
    edge.add_argument(
        "--sweep",
        action="store_true",
        help="instead of one live run: entropy and the router at every target over every wire "
        "-> RUN_DIR/edge/sweep.json (the report's accuracy-vs-bytes figure)",
    )
    _add_quiet(edge)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ddnn", description=__doc__, formatter_class=_Help)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_run,
        _add_study,
        _add_prepare,
        _add_train,
        _add_collect,
        _add_route,
        _add_evaluate_report,
        _add_split,
        _add_interop,
        _add_bench,
    ):
        add(commands)
    return parser


def progress_from(args) -> Progress:
    return Progress(quiet=getattr(args, "quiet", False))


def train_config_from(args) -> TrainConfig:
    config = TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        local_weight=args.local_weight,
        seed=getattr(args, "seed", DEFAULTS.seed),
        data_dir=args.data_dir,
        limit_train=args.limit_train,
        download=args.download,
        conv=args.conv,
        precision=args.precision,
    )
    config.validate()
    return config


def _train(args) -> None:
    config = train_config_from(args)
    history = run_training(config, args.out, progress=progress_from(args))
    print(f"trained {args.out}: {len(history)} of {config.epochs} epochs done")


def _prepare(args) -> None:
    from ddnn_jax.data.datasets import load_dataset, prepare_dataset

    prepared = prepare_dataset(
        args.dataset, data_dir=args.data_dir, download=args.download, verbose=args.verbose
    )
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    sizes = ", ".join(f"{name} {len(getattr(data, name))}" for name in ("train", "val", "test"))
    print(
        f"prepared: {prepared} ({sizes}); copy {prepared.parent.parent} to another host "
        "and pass it as --data-dir"
    )


def _collect(args) -> None:
    for name, path in collect(args.run, with_features=args.features, progress=progress_from(args)).items():
        print(f"{name}: {path}")


def _route(args) -> None:
    inputs = args.inputs or ("logits",)
    if args.name and len(inputs) > 1:
        raise UsageError("--name names one router family: give a single --inputs value")
    for mode in inputs:
        config = RouterConfig(
            inputs=mode,
            objective=args.objective,
            labels=args.labels or ("cost" if args.objective == "grid" else "benefit"),
            targets=args.grid or DEFAULT_TARGETS,
            hidden=DEPTH_PRESETS[args.depth],
            dropout_rate=args.dropout,
            max_epochs=args.max_epochs,
            seed=args.router_seed,
        )
        print(f"{mode}: {route(args.run, config, name=args.name, progress=progress_from(args)).root}")


def _given_thresholds(path: Path | None) -> dict[str, list[float]] | None:
    if path is None:
        return None
    value = read_json(path, 'give a JSON object such as {"logits": [0.1, -0.3]}')
    if not isinstance(value, dict) or not all(
        isinstance(v, list)
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in v)
        for v in value.values()
    ):
        raise UsageError(
            f"{path} must map router family names to lists of finite thresholds, one per target, "
            'such as {"logits": [0.1, -0.3]}'
        )
    return {k: [float(t) for t in v] for k, v in value.items()}


def _evaluate(args) -> None:
    evaluate(args.run, EvaluationConfig(border_tau=args.tau), _given_thresholds(args.thresholds))
    print(f"results: {RunDir(args.run).results}")


def _check(args) -> int:
    """Exit 0 only when every artefact is ok, 1 when some need repair."""
    from ddnn_jax.jobs.check import OK, check, summary

    findings = check(args.run)
    for finding in findings:
        print(finding.line())
    print(summary(findings))
    return 0 if all(f.status == OK for f in findings) else EXIT_FAILURE


def _report(args) -> None:
    print(f"report: {report(args.run)}")


def _serve(args) -> None:
    from ddnn_jax.deploy.cloud import COUNTERS, CloudHalf, cloud_app, serve_forever

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in [0, 65535], got {args.port}")
    cloud = CloudHalf.load(args.run, args.max_batch)
    cloud.warm_up()
    app = cloud_app(cloud)
    serve_forever(
        app,
        args.host,
        args.port,
        lambda url: print(f"ddnn serve: cloud half of {args.run} listening on {url}", flush=True),
    )
    counters = app[COUNTERS]
    print(f"ddnn serve: stopped after {counters.requests} requests ({counters.samples} samples answered)")


def _edge(args) -> None:
    from ddnn_jax.deploy.edge import EdgeConfig, run_edge, sweep

    config = EdgeConfig(
        server=args.server,
        mechanism=args.mechanism,
        target=args.target,
        wire=args.wire,
        batch=args.batch,
        family=args.family,
        timeout_s=args.timeout,
        limit=args.limit,
        images=args.images,
    )
    if args.sweep:
        print(f"sweep: {sweep(args.run, config, out=args.out, progress=progress_from(args))}")
        return
    path, report = run_edge(args.run, config, out=args.out, progress=progress_from(args))
    print(summary_line(report))
    print(f"report: {path}")


def summary_line(report: dict) -> str:
    """One line of an edge report: accuracy, local rate, bytes, latency, fallbacks."""
    b, lat = report["bytes"], report["latency_ms"]
    per_offload = "-" if b["uplink_per_offload"] is None else f"{b['uplink_per_offload']:.0f}"
    accuracy = "accuracy unknown (unlabelled images)"
    if report["accuracy"] is not None:
        live, in_process = 100 * report["accuracy"], 100 * report["in_process"]["accuracy"]
        accuracy = f"accuracy {live:.2f} % (in process {in_process:.2f} %)"
    return (
        f"{accuracy}, {report['samples']} images, "
        f"local {100 * report['local_rate']:.1f} %, uplink {b['uplink_per_sample']:.0f} B/sample "
        f"{per_offload} B/offload, latency p50 {lat['per_sample']['p50']:.2f} ms p99 "
        f"{lat['per_sample']['p99']:.2f} ms, {report['throughput_per_s']:.0f} samples/s, "
        f"fallbacks {100 * report['fallback_rate']:.1f} %"
    )


def _import_torch(args) -> None:
    from ddnn_jax.interop.convert import import_torch

    paths = {
        "feature_extractor": args.feature_extractor,
        "local_classifier": args.local_classifier,
        "cloud": args.cloud,
    }
    out = import_torch(
        paths,
        dataset=args.dataset,
        out=args.out,
        mean=args.mean,
        std=args.std,
        data_dir=args.data_dir,
        download=args.download,
        seed=args.seed,
        limit_train=args.limit_train,
    )
    print(f"imported: {out} (next: ddnn collect --run {out})")


def _export_torch(args) -> None:
    from ddnn_jax.interop.convert import export_torch

    for name, path in export_torch(args.run, args.out, force=args.force).items():
        print(f"{name}: {path}")


def _bench(args) -> None:
    module = importlib.import_module(f"ddnn_jax.benchmarks.{BENCHMARKS[args.benchmark]}")
    module.main(args.options)


def run_plan_from(args) -> RunPlan:
    """The plan of ``ddnn run``, checked before anything is trained."""
    plan = RunPlan(
        targets=args.grid or RunPlan.targets,
        inputs=args.inputs,
        ablations=not args.no_ablations,
        sweep_weights=args.sweep_weights,
        router_seed=args.router_seed,
    )
    try:
        check_targets(plan.targets)
        for mode in plan.inputs or ():
            input_kind(mode)
        for weight in plan.sweep_weights:
            parse_local_weight(str(weight))
    except ValueError as err:
        raise UsageError(str(err)) from None
    return plan


def _run(args) -> None:
    plan = run_plan_from(args)
    print(f"report: {run(train_config_from(args), args.out, plan, progress=progress_from(args))}")


def _study(args) -> None:
    from ddnn_jax.jobs.study import aggregate, run_study

    if args.aggregate is not None:
        if args.seeds is not None or args.out is not None:
            raise UsageError("--aggregate reads the runs already there: give it without --seeds and --out")
        print(f"study: {aggregate(args.aggregate)}")
        return
    if args.seeds is None or args.out is None:
        raise UsageError("give --seeds and --out to make a study, or --aggregate STUDY_DIR")
    config, plan = train_config_from(args), run_plan_from(args)
    print(f"study: {run_study(config, args.seeds, args.out, plan, progress=progress_from(args))}")


COMMANDS = {
    "prepare": _prepare,
    "train": _train,
    "collect": _collect,
    "route": _route,
    "evaluate": _evaluate,
    "report": _report,
    "check": _check,
    "run": _run,
    "study": _study,
    "serve": _serve,
    "edge": _edge,
    "import-torch": _import_torch,
    "export-torch": _export_torch,
    "bench": _bench,
}


def _one_line(text: str) -> str:
    """The message with any unprintable character (a newline in a flag value, say) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _out_of_space(err: BaseException | None) -> bool:
    """Whether a full disk (or quota) caused ``err``: an OSError saying so anywhere in its chain,
    or tensorstore's (Orbax's) error, which carries the OS message in its text."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _processes(args) -> runtime.Processes | None:
    """The multi-process flags, checked; None for a process on its own."""
    given = [getattr(args, name, None) for name in ("coordinator", "num_processes", "process_id")]
    if not getattr(args, "distributed", False):
        if any(value is not None for value in given):
            raise UsageError("--coordinator, --num-processes and --process-id need --distributed")
        return None
    coordinator, count, index = given
    if count is not None and count < 1:
        raise UsageError(f"--num-processes must be at least 1, got {count}")
    if index is not None and not 0 <= index < (count or index + 1):
        raise UsageError(f"--process-id must lie in [0, --num-processes), got {index}")
    return runtime.Processes(coordinator, count, index)


def configure_runtime(args) -> None:
    """Before anything starts JAX's backend: the compilation cache and GPU determinism."""
    cache = getattr(args, "compile_cache", "default")
    if cache == "":
        raise UsageError("--compile-cache needs a directory, or 'off'")
    try:
        deterministic = not getattr(args, "nondeterministic", False)
        runtime.configure(
            None if cache == "off" else cache, deterministic=deterministic, processes=_processes(args)
        )
    except OSError as err:
        raise UsageError(
            f"--compile-cache {cache}: cannot use it as a directory ({err.strerror}): give another, or 'off'"
        ) from None


def main(argv: list[str] | None = None) -> int:
    # TensorFlow only prepares data for us; its and tfds's log lines are noise on stderr.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
        configure_runtime(args)
        code = COMMANDS[args.command](args)
    except UsageError as err:
        print(f"ddnn: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as err:
        print(f"ddnn: failed: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("ddnn: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if not _out_of_space(err):
            raise  # a bug: its traceback is what we need to fix it
        print(
            "ddnn: error: no space left on the device: free some, then rerun the same command",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
