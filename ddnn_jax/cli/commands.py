"""The ``ddnn`` commands: each handler builds its config from the parsed flags and calls one
library entry, then prints where the result went. ``COMMANDS`` maps each subcommand to it."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ddnn_jax.cli.bench import BENCHMARKS
from ddnn_jax.cli.configs import (
    evaluation_config_from,
    given_thresholds,
    guarantee_from,
    progress_from,
    router_config_from,
    router_inputs_from,
    run_plan_from,
    train_config_from,
)

# the exit statuses the JAX-free edge shares, defined where it can import them without JAX
from ddnn_jax.cli.edge_flags import EXIT_INTERRUPTED, EXIT_USAGE, print_report, stream_fields  # noqa: F401
from ddnn_jax.common.errors import UsageError
from ddnn_jax.jobs.run import run
from ddnn_jax.jobs.training import run_training
from ddnn_jax.rundir import RunDir
from ddnn_jax.stages.collect import collect
from ddnn_jax.stages.evaluate import evaluate
from ddnn_jax.stages.report import report
from ddnn_jax.stages.route import route

EXIT_FAILURE = 1  # the command ran and found something wrong


def _train(args) -> None:
    config = train_config_from(args)
    history = run_training(config, args.out, progress=progress_from(args))
    print(f"trained {args.out}: {len(history)} of {config.epochs} epochs done")


def _prepare(args) -> None:
    from ddnn_jax.data import load_dataset, prepare_dataset

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
    configs = [router_config_from(args, inputs) for inputs in router_inputs_from(args)]
    for config in configs:
        family = route(args.run, config, name=args.name, progress=progress_from(args))
        print(f"{config.inputs}: {family.root}")


def _evaluate(args) -> None:
    evaluate(args.run, evaluation_config_from(args), given_thresholds(args.thresholds))
    print(f"results: {RunDir(args.run).results}")


def _check(args) -> int:
    """Exit 0 only when every artefact is ok, 1 when some need repair."""
    from ddnn_jax.jobs.check import OK, check, clean, summary

    if args.clean:
        removed = clean(args.run)
        for path, size in removed.items():
            print(f"removed  {path} ({size:,} bytes)")
    findings = check(args.run)
    for finding in findings:
        print(finding.line())
    print(summary(findings))
    return 0 if all(f.status == OK for f in findings) else EXIT_FAILURE


def _report(args) -> None:
    print(f"report: {report(args.run)}")


def _serve(args) -> None:
    from ddnn_jax.deploy.auth import check_exposure, new_token, read_token, tls_context
    from ddnn_jax.deploy.cloud import COUNTERS, CloudHalf, cloud_app, serve_forever

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in [0, 65535], got {args.port}")
    token = new_token(args.new_token) if args.new_token else None
    token = read_token(args.token_file) if args.token_file else token
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: give both, or neither for plain http")
    tls = None if args.tls_cert is None else tls_context(args.tls_cert, args.tls_key)
    warning = check_exposure(args.host, token, args.no_auth)
    if warning:
        print(warning, file=sys.stderr)
    bottlenecks = args.bottlenecks if args.bottlenecks != ("none",) else ()
    cloud = CloudHalf.load(args.run, args.max_batch, bottlenecks)
    cloud.warm_up()
    app = cloud_app(cloud, token)
    guarded = " (requests must carry the token)" if token else ""
    serve_forever(
        app,
        args.host,
        args.port,
        lambda urls: print(
            f"ddnn serve: cloud half of {args.run} listening on {', '.join(urls)}{guarded}", flush=True
        ),
        tls,
    )
    counters = app[COUNTERS]
    print(f"ddnn serve: stopped after {counters.requests} requests ({counters.samples} samples answered)")


def _edge(args) -> int | None:
    from ddnn_jax.deploy.edge import EdgeConfig, run_edge
    from ddnn_jax.deploy.sweep import sweep

    config = EdgeConfig(
        mechanism=args.mechanism,
        bottleneck=args.bottleneck,
        family=args.family,
        images=args.images,
        guarantee=guarantee_from(args) if args.guarantee else None,
        **stream_fields(args),
    )
    if args.sweep:
        print(f"sweep: {sweep(args.run, config, out=args.out, progress=progress_from(args))}")
        return None
    return print_report(lambda: run_edge(args.run, config, out=args.out, progress=progress_from(args)))


def _export_edge(args) -> int | None:
    from ddnn_jax.interop.export_edge import ExportConfig, VerificationFailed, export_edge, summary

    config = ExportConfig(args.format, args.family, args.batch, args.bottleneck, args.int8, args.calibration)
    try:
        out, info = export_edge(args.run, args.out, config, progress_from(args))
    except VerificationFailed as failed:
        print(
            f"ddnn: failed: the exported graph does not match the run, nothing written: {failed}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"verified: {summary(info['verification'])}")
    if info["int8"] is not None:
        kept = "within" if info["int8"]["passed"] else "NOT within"
        print(f"int8 ({info['int8']['bytes']:,} bytes, {kept} the tolerance): {summary(info['int8'])}")
    print(f"export: {out}")
    return None


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
        limit_eval=args.limit_eval,
    )
    print(f"imported: {out} (next: ddnn collect --run {out})")


def _export_torch(args) -> None:
    from ddnn_jax.interop.convert import export_torch

    for name, path in export_torch(args.run, args.out, force=args.force).items():
        print(f"{name}: {path}")


def _bench(args) -> None:
    BENCHMARKS[args.benchmark](args.options)


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


def _bottleneck(args) -> None:
    from ddnn_jax.core.bottleneck import BottleneckConfig
    from ddnn_jax.rundir.bottlenecks import read_bottleneck
    from ddnn_jax.stages.bottleneck import bottleneck

    config = BottleneckConfig(
        channels=args.channels,
        bits=args.bits,
        stride=args.stride,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    written = bottleneck(args.run, config, progress=progress_from(args))
    record = read_bottleneck(written)
    print(
        f"bottleneck {written.name}: {record.payload_bytes} B per offload, "
        f"val cloud accuracy {record.val_accuracy_cloud:.4f} (epoch {record.best_epoch})"
    )
    print(f"written: {written.root}")


def _compare(args) -> None:
    from ddnn_jax.jobs.compare import compare
    from ddnn_jax.jobs.compare_report import row_line

    value = compare(args.a, args.b, margin=args.margin, out=args.out)
    for row in value["rows"]:
        print(row_line(row, args.margin))
    print(f"compare: {value['report']}")


COMMANDS: dict[str, Callable[..., int | None]] = {
    "prepare": _prepare,
    "train": _train,
    "collect": _collect,
    "route": _route,
    "bottleneck": _bottleneck,
    "evaluate": _evaluate,
    "report": _report,
    "check": _check,
    "run": _run,
    "study": _study,
    "compare": _compare,
    "serve": _serve,
    "edge": _edge,
    "import-torch": _import_torch,
    "export-torch": _export_torch,
    "export-edge": _export_edge,
    "bench": _bench,
}
