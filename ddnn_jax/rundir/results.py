"""results.json, the schema the evaluate stage writes and the report reads, and the readers of
the other measurements in a run: edge reports, the edge sweep and the inference timings."""

# No postponed annotations in this module: TypedDict tells NotRequired keys from required ones
# only when its annotations are evaluated, and read_results checks the required ones.

from pathlib import Path
from typing import Any, NotRequired, TypedDict

from ddnn_jax.common.errors import UsageError
from ddnn_jax.rundir.files import read_json, write_json
from ddnn_jax.rundir.layout import EDGE_REPORT, RunDir, as_run
from ddnn_jax.rundir.schema import wrong_field


class Point(TypedDict):
    """One operating point of a mechanism on the test split."""

    target: float  # the L0 asked for
    local_rate: float
    accuracy: float
    decision_accuracy: NotRequired[float]  # per-target routers: against their own meta-labels
    best_epoch: NotRequired[int]
    epochs_run: NotRequired[int]
    threshold: NotRequired[float]  # calibrated routers: offload iff logit >= threshold
    # behind a bottleneck: the entropy-coded payload of the offloads, per test sample
    coded_bytes_per_sample: NotRequired[float]
    # guaranteed curves (*_guaranteed): the guarantee, its epsilon and delta, the bound it
    # certifies (local rate from below, accuracy drop from above) and the validation local rate
    guarantee: NotRequired[str]
    epsilon: NotRequired[float]
    delta: NotRequired[float]
    certified_bound: NotRequired[float]
    val_local_rate: NotRequired[float]


class UnconstrainedPoint(TypedDict):
    """The oracle at the local rate it chooses itself."""

    target: None
    local_rate: float
    accuracy: float


class RouterResult(TypedDict):
    family: str
    made_from: str  # family_fingerprint of the scores evaluated
    config: dict[str, Any]
    points: list[Point]  # the thesis decision, logit >= 0 (per-target routers; [] for a score)
    entropy_at_achieved_rate: list[Point]  # the entropy rule at the rates ``points`` kept
    calibrated: list[Point]  # at the thresholds calibrated on validation (or given)
    threshold_source: str  # 'validation' or 'given' (ddnn evaluate --thresholds)
    quality: str  # FamilyRecord.quality
    train_quality: list[list[float]]
    val_quality: list[list[float]]
    seconds: dict[str, float]
    backend: str


class Comparison(TypedDict):
    """A router curve against a baseline rule at the same target, sample by sample."""

    target: float
    mechanism: str  # a router curve
    baseline: str  # 'entropy' or 'random'
    difference: float  # accuracy(mechanism) - accuracy(baseline)
    ci95: list[float]  # paired percentile bootstrap over test samples
    p_value: float  # exact McNemar (two-sided binomial test of the discordant pairs)
    local_rate: float
    baseline_local_rate: float
    n: int  # test samples
    discordant: list[int]  # [mechanism right & baseline wrong, the reverse]


class TestAnalysis(TypedDict):
    router: str
    target: float
    tau: float
    noise_rate: float
    border_rate: float
    shares: dict[str, float]
    misclassification: dict[str, float | None]


class SweepRun(TypedDict):
    local_weight: float
    seed: int
    epochs: int
    limit_train: int | None
    edge_only_accuracy: float
    cloud_only_accuracy: float
    entropy: list[Point]


class Results(TypedDict):
    """results.json. Rates and accuracies are fractions in [0, 1] on the test split."""

    dataset: str
    seed: int
    local_weight: float | None
    local_weight_mode: str
    best_epoch: int
    test_size: int
    made_from: str  # outputs_fingerprint of the outputs scored
    edge_only_accuracy: float
    cloud_only_accuracy: float
    oracle_unconstrained: UnconstrainedPoint
    curves: dict[str, list[Point]]
    # per curve: auc, gap_to_oracle, oracle_gap_recovered (None where the oracle is no better
    # than random)
    summary: dict[str, dict[str, Any]]
    comparisons: list[Comparison]
    routers: dict[str, RouterResult]  # by curve name
    label_analysis: dict[str, Any]
    test_analysis: TestAnalysis | None
    latency_model: dict[str, Any]
    local_weight_sweep: list[SweepRun]
    timing: dict[str, Any]
    evaluation_config: dict[str, Any]
    inference: list[dict[str, Any]] | None  # the lines of bench_inference.json
    # per exit ('local', 'cloud'): temperature fitted on val, ECE/NLL/Brier before and after
    # on val and test, the test split's reliability bins (core.calibration); absent in results
    # written before they existed
    calibration: NotRequired[dict[str, dict[str, Any]]]
    # per mechanism with a score: aurc, e_aurc, risk_coverage [{coverage, risk}] on test
    selective: NotRequired[dict[str, dict[str, Any]]]
    # the guarantee of the *_guaranteed curves (kind, epsilon, delta) and the check of its
    # promise on the pooled val+test outputs (core.guarantees.violation_rates)
    guarantees: NotRequired[dict[str, Any]]
    # per learned bottleneck (RUN_DIR/bottlenecks/NAME): config, payload_bytes, code_shape,
    # cloud_only_accuracy, and the curves and summary of the DDNN with it (same edge decisions)
    bottlenecks: NotRequired[dict[str, dict[str, Any]]]


def write_results(run: RunDir, results: Results) -> None:
    write_json(run.results, results)


def read_results(run_dir: RunDir | Path | str) -> Results:
    """results.json, or a UsageError when it is missing, damaged or from another version."""
    run = as_run(run_dir)
    if not run.results.is_file():
        raise UsageError(f"{run.results} is missing: run 'ddnn evaluate --run {run}' first")
    value = read_json(run.results, f"run 'ddnn evaluate --run {run}' again")
    missing = sorted(Results.__required_keys__ - set(value)) if isinstance(value, dict) else ["all"]
    if missing:
        raise UsageError(
            f"{run.results} lacks '{missing[0]}' (written by another version): "
            f"run 'ddnn evaluate --run {run}' again"
        )
    problem = wrong_field(Results, value)
    if problem is not None:
        raise UsageError(f"{run.results} is damaged ({problem}): run 'ddnn evaluate --run {run}' again")
    return value


def read_edge_reports(run: RunDir) -> list[dict[str, Any]]:
    """Every edge_report.json under RUN_DIR/edge/, by name."""
    if not run.edge_dir.is_dir():
        return []
    paths = sorted(run.edge_dir.glob(f"*/{EDGE_REPORT}"))
    return [read_json(path, f"delete {path.parent} and run 'ddnn edge' again") for path in paths]


def read_edge_sweep(run: RunDir) -> dict[str, Any] | None:
    """RUN_DIR/edge/sweep.json (``ddnn edge --sweep``), if the run has one."""
    if not run.edge_sweep.is_file():
        return None
    return read_json(run.edge_sweep, f"delete it and run 'ddnn edge --run {run} --sweep' again")


def read_inference_timings(run: RunDir) -> list[dict[str, Any]] | None:
    """The lines of bench_inference.json, if the run has them."""
    if not run.bench_inference.is_file():
        return None
    return read_json(run.bench_inference, f"delete it and run 'ddnn bench inference --run {run}'")
