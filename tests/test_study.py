"""``ddnn study``: aggregation over seeds, its statistics, and the input it refuses."""

import json
import shutil

import numpy as np
import pytest
import scipy.stats

from conftest import SMALL_RUN, make_tiny_run
from ddnn_jax import cli
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.jobs.run import RunPlan
from ddnn_jax.jobs.study import study_identity
from ddnn_jax.jobs.study_stats import mean_interval, rank_correlation
from ddnn_jax.rundir import StudyDir


def _usage_error(capsys, argv, fragment):
    capsys.readouterr()
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """A study directory of three synthetic runs, each routed (logits) and evaluated."""
    root = tmp_path_factory.mktemp("study")
    for seed in range(3):
        run = make_tiny_run(root / f"seed_{seed}", seed=seed, local_weight="per-run")
        route = ["route", "--run", str(run), "--grid", "0.3,0.54,0.7", "--max-epochs", "2"]
        assert cli.main(route) == 0
        assert cli.main([*route, "--objective", "score"]) == 0
        assert cli.main(["evaluate", "--run", str(run)]) == 0
    return root


def test_aggregate_is_recomputable_from_the_runs(three_seeds):
    assert cli.main(["study", "--aggregate", str(three_seeds)]) == 0
    study = json.loads((three_seeds / "study.json").read_text())
    runs = [json.loads((three_seeds / f"seed_{s}" / "results.json").read_text()) for s in range(3)]
    assert study["seeds"] == [0, 1, 2] and study["dataset"] == "fashion_mnist"

    accuracies = [next(p for p in r["curves"]["entropy"] if p["target"] == 0.3)["accuracy"] for r in runs]
    row = next(p for p in study["curves"]["entropy"] if p["target"] == 0.3)
    half = scipy.stats.t.ppf(0.975, 2) * np.std(accuracies, ddof=1) / np.sqrt(3)
    assert row["n"] == 3 and row["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert row["accuracy_ci95"] == pytest.approx([np.mean(accuracies) - half, np.mean(accuracies) + half])
    assert "router_logits_calibrated" in study["curves"]
    assert not any(name.startswith("entropy_at_") for name in study["curves"])  # rates differ per run

    aucs = [r["summary"]["router_logits_calibrated"]["auc"] for r in runs]
    assert study["summary"]["router_logits_calibrated"]["auc_mean"] == pytest.approx(np.mean(aucs))

    score = next(d for d in study["auc_differences"] if d["mechanism"] == "router_logits_score_calibrated")
    per_seed = [
        r["summary"]["router_logits_score_calibrated"]["auc"]
        - r["summary"]["router_logits_calibrated"]["auc"]
        for r in runs
    ]
    assert score["difference_mean"] == pytest.approx(np.mean(per_seed)) and score["n"] == 3

    key = ("router_logits_calibrated", "entropy", 0.54)
    differences = [
        next(c for c in r["comparisons"] if (c["mechanism"], c["baseline"], c["target"]) == key)["difference"]
        for r in runs
    ]
    row = next(c for c in study["comparisons"] if (c["mechanism"], c["baseline"], c["target"]) == key)
    assert row["difference_mean"] == pytest.approx(np.mean(differences)) and row["n"] == 3
    assert row["p_value"] == pytest.approx(scipy.stats.ttest_1samp(differences, 0.0).pvalue)

    weights = [r["local_weight"] for r in runs]
    assert len(set(weights)) == 3  # per-run w differs by seed
    edge = [r["edge_only_accuracy"] for r in runs]
    rho = study["local_weight"]["spearman"]["edge-only"]
    assert rho["rho"] == pytest.approx(scipy.stats.spearmanr(weights, edge).statistic)
    reliability = study["reliability"]
    aurc = [r["selective"]["router_logits"]["aurc"] for r in runs]
    assert reliability["selective"]["router_logits"]["aurc"]["mean"] == pytest.approx(np.mean(aurc))
    ece = [r["calibration"]["local"]["test"]["after"]["ece"] for r in runs]
    assert reliability["calibration"]["local"]["ece_after"]["mean"] == pytest.approx(np.mean(ece))
    rates = [r["guarantees"]["check"]["guaranteed_violation_rate"] for r in runs]
    assert reliability["violation_rates"]["guaranteed"]["mean"] == pytest.approx(np.mean(rates))
    report = (three_seeds / "study.md").read_text()
    assert "figures/study_curves.png" in report and "router_logits_calibrated" in report
    assert "## Selective prediction of the local exit" in report


def test_aggregate_refuses_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
    make_tiny_run(tmp_path / "seed_0", seed=0)
    make_tiny_run(tmp_path / "seed_1", seed=1, epochs=3)
    aggregate = ["study", "--aggregate", str(tmp_path)]
    _usage_error(capsys, aggregate, "differ in more than the seed (epochs: 20 vs 3)")
    make_tiny_run(tmp_path / "seed_1", seed=1, dataset="mnist")
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path)], "is a mnist run but")
    make_tiny_run(tmp_path / "seed_1", seed=0)
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path)], "both have seed 0")
    assert not (tmp_path / "study.json").exists()


def test_aggregate_refuses_a_copy_of_a_run_with_its_seed_edited(tmp_path, capsys):
    make_tiny_run(tmp_path / "seed_0", seed=0)
    assert cli.main(["evaluate", "--run", str(tmp_path / "seed_0")]) == 0
    shutil.copytree(tmp_path / "seed_0", tmp_path / "seed_1")
    config = json.loads((tmp_path / "seed_1" / "config.json").read_text())
    (tmp_path / "seed_1" / "config.json").write_text(json.dumps({**config, "seed": 1}))
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path)], "hold the same outputs")
    assert not (tmp_path / "study.json").exists()
    # and a run directory is no study's --out
    before = sorted(p.name for p in (tmp_path / "seed_0").iterdir())
    _usage_error(capsys, ["study", "--seeds", "0", "--out", str(tmp_path / "seed_0")], "is a run directory")
    assert sorted(p.name for p in (tmp_path / "seed_0").iterdir()) == before


def test_aggregate_needs_runs_and_results(tmp_path, capsys):
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path)], "holds no runs")
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path / "nowhere")], "is not a directory of runs")
    make_tiny_run(tmp_path / "seed_0", seed=0)
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path)], "run 'ddnn evaluate")


@pytest.mark.parametrize(
    "seeds, fragment",
    [
        ("", "expected comma-separated seeds"),
        ("0,1,0", "--seeds repeats 0"),
        ("0,-1", "non-negative"),
        ("0,x", "expected an integer, got 'x'"),
    ],
)
def test_bad_seed_lists(tmp_path, capsys, seeds, fragment):
    _usage_error(capsys, ["study", "--seeds", seeds, "--out", str(tmp_path / "s")], fragment)
    assert not (tmp_path / "s").exists()


def test_study_arguments_that_do_not_fit(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _usage_error(capsys, ["study", "--seeds", "0", "--out", str(a_file)], "is a file")
    _usage_error(capsys, ["study", "--seeds", "0"], "give --seeds and --out")
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path), "--seeds", "0"], "without --seeds")


def test_a_study_resumed_with_other_flags_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    plan = RunPlan(inputs=("logits",), sweep_weights=())
    identity = study_identity(TrainConfig(epochs=1, limit_train=512), plan)
    StudyDir(out).config.write_text(json.dumps(identity))
    common = ["study", "--seeds", "0", "--out", str(out), "--inputs", "logits", "--limit-train", "512"]
    _usage_error(capsys, [*common, "--epochs", "2"], "started with other flags (train.epochs: 1 vs 2")
    assert list(out.iterdir()) == [StudyDir(out).config]  # nothing trained


def test_intervals():
    mean, interval = mean_interval([0.9, 0.92, 0.91])
    assert mean == pytest.approx(0.91)
    assert interval == pytest.approx(list(scipy.stats.t.interval(0.95, 2, loc=0.91, scale=0.01 / np.sqrt(3))))
    assert mean_interval([0.5]) == (0.5, None)
    assert mean_interval([0.5, 0.5]) == (0.5, [0.5, 0.5])
    assert rank_correlation([1, 2, 3], [5, 5, 5])["rho"] is None
    few = rank_correlation([0.1, 0.5, 0.9], [1, 2, 3])
    assert few["rho"] == pytest.approx(1.0) and few["ci95"] is None  # needs 4 runs
    assert few["p_value"] == pytest.approx(2 / 6)  # exact: 2 of the 3! pairings are as extreme
    many = rank_correlation([0.1, 0.3, 0.5, 0.7, 0.9, 0.2], [1, 2, 4, 3, 6, 1.5])
    assert many["ci95"][0] < many["rho"] < many["ci95"][1]


@pytest.mark.slow
def test_study_end_to_end_resumes_without_redoing_finished_seeds(tmp_path, capsys, fashion_mnist_ready):
    out = tmp_path / "study"
    # SMALL_RUN's shapes: its compiled programs come from the session's cache
    flags = [*SMALL_RUN, "--no-ablations", "--no-inference-timing", "--quiet", "--out", str(out)]
    assert cli.main(["study", "--seeds", "0", *flags]) == 0
    finished = {
        path: path.stat().st_mtime_ns
        for path in (out / "seed_0" / "metrics.jsonl", out / "seed_0" / "routers" / "logits" / "router.json")
    }
    capsys.readouterr()
    # as if the first command had been killed after seed 0: the same flags, more seeds
    assert cli.main(["study", "--seeds", "0,1", *flags]) == 0
    assert "seed 0 (1 of 2)" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in finished} == finished
    study = json.loads((out / "study.json").read_text())
    assert study["seeds"] == [0, 1] and [r["run"] for r in study["runs"]] == ["seed_0", "seed_1"]
    assert {"router_logits_calibrated", "router_logits_score_calibrated"} <= set(study["curves"])
    assert not (out / "seed_0" / "weight_sweep").exists()  # Fig. 6.17 comes from the seeds' runs


def test_results_of_another_version_are_refused_with_the_fix(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "seed_0", seed=0)
    (run / "results.json").write_text(json.dumps({"dataset": "fashion_mnist"}))
    _usage_error(capsys, ["study", "--aggregate", str(tmp_path)], "(written by another version)")
    _usage_error(capsys, ["report", "--run", str(run)], f"run 'ddnn evaluate --run {run}' again")


def test_a_study_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _usage_error(capsys, ["study", "--seeds", "0", "--out", str(tmp_path / "file" / "s")], "cannot make")
