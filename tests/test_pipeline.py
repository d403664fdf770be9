"""route -> evaluate -> report on a small synthetic run directory, and the stages' bad input."""

import functools
import json

import numpy as np
import pytest
from matplotlib import image as mpimg

from conftest import SIZES, SMALL_RUN, write_tiny_outputs
from ddnn_jax import cli
from ddnn_jax.core.mechanisms import RULE_TARGETS
from ddnn_jax.rundir import RunDir


def assert_is_a_drawn_figure(path):
    """A PNG of the report's size (6.4 x 4.2 in at 120 dpi) with something drawn on it: several
    colours, and dark pixels (axes, text) as well as white ones."""
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (504, 768), pixels.shape
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb.round(2), axis=0)) > 20
    assert (rgb.mean(-1) < 0.3).mean() > 0.001 and (rgb.mean(-1) > 0.95).mean() > 0.3


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.slow
def test_route_evaluate_report(tiny_run):
    assert (
        cli.main(
            [
                "route",
                "--run",
                str(tiny_run),
                "--inputs",
                "logits,logits+",
                "--grid",
                "0.3,0.54",
                "--max-epochs",
                "2",
            ]
        )
        == 0
    )
    assert cli.main(["evaluate", "--run", str(tiny_run)]) == 0
    assert cli.main(["report", "--run", str(tiny_run)]) == 0
    results = json.loads((tiny_run / "results.json").read_text())

    test = np.load(tiny_run / "outputs" / "test.npz")
    local_ok = test["local_logits"].argmax(-1) == test["labels"]
    cloud_ok = test["cloud_logits"].argmax(-1) == test["labels"]
    assert results["edge_only_accuracy"] == pytest.approx(local_ok.mean())
    assert results["cloud_only_accuracy"] == pytest.approx(cloud_ok.mean())
    curves = results["curves"]
    for name in ("random", "entropy", "max_prob", "margin", "oracle", "router_logits", "router_logits_plus"):
        assert name in curves
    n = SIZES["test"]
    for name in ("random", "entropy", "max_prob", "margin", "oracle"):
        assert [p["target"] for p in curves[name]] == list(RULE_TARGETS)
        for p in curves[name]:
            assert abs(p["local_rate"] - p["target"]) <= 1 / n
            assert p["accuracy"] <= _oracle_at(curves, p["target"]) + 1e-9
    for p in curves["router_logits"]:
        assert (
            0 <= p["local_rate"] <= 1 and p["accuracy"] <= _oracle_at(curves, p["local_rate"], 1 / n) + 1e-9
        )

    # Entropy at L0 = 0.5, recomputed from test.npz alone.
    p = _softmax(test["local_logits"].astype(np.float64))
    entropy = -(p * np.log(p)).sum(-1) / np.log(5)
    keep = np.zeros(n, bool)
    keep[np.argsort(entropy, kind="stable")[: int(np.floor(0.5 * n + 0.5))]] = True
    expected = np.where(keep, local_ok, cloud_ok).mean()
    assert next(q for q in curves["entropy"] if q["target"] == 0.5)["accuracy"] == pytest.approx(expected)

    assert set(results["label_analysis"]) >= {
        "noise_rate",
        "border_rate",
        "oracle_local_rate",
        "oracle_accuracy",
    }
    analysis = results["test_analysis"]
    assert set(analysis["misclassification"]) == {"noise", "border", "normal"}
    assert sum(analysis["shares"].values()) == pytest.approx(1.0)

    # Calibrated decisions: thresholds and local rates recomputable from scores.npz.
    scores = np.load(tiny_run / "routers" / "logits" / "scores.npz")
    ordered = np.sort(scores["val"].astype(np.float64), axis=-1)
    for g, p in enumerate(curves["router_logits_calibrated"]):
        k = int(np.floor(p["target"] * SIZES["val"] + 0.5))
        assert p["threshold"] == pytest.approx((ordered[g, k - 1] + ordered[g, k]) / 2)
        assert p["local_rate"] == pytest.approx((scores["test"][g] < p["threshold"]).mean())
    compared = {(c["mechanism"], c["baseline"]) for c in results["comparisons"]}
    assert ("router_logits_calibrated", "entropy") in compared and ("router_logits", "random") in compared

    report = (tiny_run / "report.md").read_text()
    assert "| router_logits_calibrated | entropy | 0.3 |" in report  # the paired differences
    for fig in ("5_1", "6_1", "6_2", "6_10", "6_11", "6_12"):
        assert_is_a_drawn_figure(tiny_run / "figures" / f"fig_{fig}.png")
        assert f"figures/fig_{fig}.png" in report
    # every figure's numbers are in its table: the router's accuracy at L0 = 0.3, in %
    router_at_03 = next(p for p in curves["router_logits"] if p["target"] == 0.3)
    assert f"{100 * router_at_03['accuracy']:.2f}" in report
    assert "ddnn route --inputs features" in report  # missing studies say how to make them


def _oracle_at(curves, rate, slack=0.0):
    """The budgeted oracle's best accuracy at or near a local rate."""
    return max(p["accuracy"] for p in curves["oracle"] if abs(p["local_rate"] - rate) <= 0.05 + slack)


def _assert_usage_error(capsys, argv, fragment):
    """In-process (no interpreter start-up): exit code 2 and exactly one line on stderr."""
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--grid", "0.3,1.5"], "target 1.5 is outside [0, 1]"),
        (["--grid", "0.3,abc"], "expected a number, got 'abc'"),
        (["--inputs", "pixels"], "unknown router input 'pixels'"),
    ],
)
def test_route_bad_arguments(tiny_run, capsys, args, fragment):
    _assert_usage_error(capsys, ["route", "--run", str(tiny_run), *args], fragment)
    assert not (tiny_run / "routers").exists()


def test_missing_outputs(tiny_run, capsys):
    (tiny_run / "outputs" / "val.npz").unlink()
    _assert_usage_error(capsys, ["route", "--run", str(tiny_run)], "run 'ddnn collect")
    _assert_usage_error(capsys, ["evaluate", "--run", str(tiny_run)], "val.npz is missing")
    _assert_usage_error(capsys, ["report", "--run", str(tiny_run)], "run 'ddnn evaluate")


def test_route_skips_a_family_that_is_up_to_date(tiny_run):
    args = ["route", "--run", str(tiny_run), "--grid", "0.5", "--max-epochs", "1"]
    assert cli.main(args) == 0
    record = RunDir(tiny_run).family("logits").record
    first = record.stat().st_mtime_ns
    assert cli.main(args) == 0
    assert record.stat().st_mtime_ns == first
    assert cli.main([*args[:-1], "2"]) == 0  # another configuration retrains
    assert json.loads(record.read_text())["config"]["max_epochs"] == 2
    second = record.stat().st_mtime_ns
    write_tiny_outputs(RunDir(tiny_run), seed=1, epoch=2)  # the DDNN was trained further
    assert cli.main([*args[:-1], "2"]) == 0  # other outputs retrain
    assert record.stat().st_mtime_ns != second
    assert json.loads(record.read_text())["outputs_epoch"] == 2
    assert not [p for p in (tiny_run / "routers").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim", ".hidden", "a/b"])
def test_route_refuses_a_name_that_is_a_path(tiny_run, capsys, name):
    victim = tiny_run.parent / "victim"
    victim.mkdir()
    (victim / "f").write_text("keep")
    _assert_usage_error(capsys, ["route", "--run", str(tiny_run), "--name", name], "plain directory name")
    assert (victim / "f").read_text() == "keep"


@pytest.mark.slow
def test_run_end_to_end_and_rerun(tmp_path, capsys, monkeypatch, fashion_mnist_ready):
    import ddnn_jax.jobs.run as run_module

    # The timing stage as it runs, with fewer repeats: what is timed matters here, not how well
    timing = functools.partial(run_module.InferenceBenchConfig, runs=2, samples=40, program_calls=40)
    monkeypatch.setattr(run_module, "InferenceBenchConfig", timing)
    out = tmp_path / "run"
    args = ["run", *SMALL_RUN, "--no-ablations", "--out", str(out)]
    assert cli.main(args) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    test = np.load(out / "outputs" / "test.npz")
    assert results["test_size"] == len(test["labels"]) == 1000
    assert results["edge_only_accuracy"] == pytest.approx(
        (test["local_logits"].argmax(-1) == test["labels"]).mean()
    )
    assert [p["target"] for p in results["curves"]["router_logits"]] == [0.3, 0.54]
    assert_is_a_drawn_figure(out / "figures" / "fig_6_2.png")
    # Fig. 6.5: the inference timings of this run's network and trained router, 54 % kept local
    # by each mechanism.
    assert_is_a_drawn_figure(out / "figures" / "fig_6_5.png")
    timed = {(r["regime"], r["mechanism"]): r for r in results["inference"] if r["measure"] == "inference"}
    assert len(timed) == 12
    for mechanism in ("ddnn_entropy", "ddnn_router", "ddnn_random"):
        assert abs(timed[("batch1024", mechanism)]["offloaded_fraction"] - 0.46) < 0.05
    assert timed[("batch1", "edge_router")]["router"].startswith(str(out / "routers" / "logits"))
    plan = json.loads((out / "run_plan.json").read_text())
    assert plan["inputs"] == ["logits"] and plan["sweep_weights"] == []
    # Given again, every stage is found complete and the results are the same.
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "epoch 1/1" not in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["curves"] == results["curves"]
