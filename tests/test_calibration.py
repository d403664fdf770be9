"""Budget calibration, the one-score router, and the paired statistics of one run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ddnn_jax import cli
from ddnn_jax.core.decisions import calibrated_thresholds, local_counts, threshold_offload
from ddnn_jax.core.labels import correctness
from ddnn_jax.core.router_net import RouterConfig
from ddnn_jax.core.router_training import make_grid_trainer, mean_accuracy_over_budgets, model_keys
from ddnn_jax.rundir import RunDir
from ddnn_jax.stages.analyses import Decisions
from ddnn_jax.stages.evaluate import EvaluationConfig, _comparisons

TARGETS = (0.0, 0.1, 0.3, 0.54, 0.7, 1.0)


def test_calibrated_thresholds_keep_exactly_the_asked_count_on_validation():
    val = np.random.default_rng(0).normal(size=997).astype(np.float32)
    thresholds = calibrated_thresholds(val, TARGETS)
    kept = (~threshold_offload(val, thresholds)).sum(-1)
    np.testing.assert_array_equal(kept, np.asarray(local_counts(jnp.asarray(TARGETS), val.size)))
    ordered = np.sort(val.astype(np.float64))
    k = int(np.asarray(local_counts(jnp.asarray([0.3]), val.size))[0])
    assert thresholds[2] == pytest.approx((ordered[k - 1] + ordered[k]) / 2)  # the midpoint
    assert thresholds[0] < ordered[0] and thresholds[-1] > ordered[-1]


def test_per_target_scores_are_calibrated_row_by_row():
    val = np.random.default_rng(1).normal(size=(3, 200))
    thresholds = calibrated_thresholds(val, (0.2, 0.5, 0.8))
    kept = (~threshold_offload(val, thresholds)).sum(-1)  # row g of val against threshold g
    np.testing.assert_array_equal(kept, [40, 100, 160])


def test_mean_accuracy_over_budgets_is_the_mean_of_every_local_count():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=50).astype(np.float32)
    local, cloud = rng.random(50) < 0.7, rng.random(50) < 0.8
    order = np.argsort(scores)
    brute = [
        np.where(np.isin(np.arange(50), order[:k]), local, cloud).mean() for k in range(51)
    ]  # the k lowest scores kept local
    value = mean_accuracy_over_budgets(
        jnp.asarray(scores), jnp.asarray(local, jnp.float32), jnp.asarray(cloud, jnp.float32)
    )
    assert float(value) == pytest.approx(np.mean(brute), abs=1e-6)


def test_a_score_router_learns_an_order_of_the_benefit():
    """The gain of offloading depends on x[0]; a trained score must order samples far better
    than chance, on validation, with one model for every target."""
    rng = np.random.default_rng(3)

    def split(n):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        cloud = np.ones(n, np.float32)
        local = (x[:, 0] < rng.normal(size=n)).astype(np.float32)  # x[0] high: offloading helps
        return x, np.stack([cloud - local, local, cloud], -1)[None]

    x, y = split(2048)
    xv, yv = split(512)
    config = RouterConfig(objective="score", labels="gain", max_epochs=12, hidden=(32,), targets=(0.3, 0.7))
    config.check()
    result = make_grid_trainer(config, len(x))(
        model_keys(config), x, y, np.ones(y.shape[:2], np.float32), xv, yv
    )
    assert np.asarray(result.val_quality).shape == (1, 12)  # one router, not one per target
    best = float(np.nanmax(np.asarray(result.val_quality)))
    local, cloud = yv[0, :, 1], yv[0, :, 2]
    chance = (local.mean() + cloud.mean()) / 2  # a random order's mean over budgets
    # the best order knowable from x: by x[0] itself
    bayes = float(mean_accuracy_over_budgets(jnp.asarray(xv[:, 0]), jnp.asarray(local), jnp.asarray(cloud)))
    assert best > chance + 0.75 * (bayes - chance), (best, chance, bayes)


def test_score_config_refuses_classification_labels():
    with pytest.raises(ValueError, match="do not fit the score objective"):
        RouterConfig(objective="score", labels="cost").check()


def test_comparisons_recompute_from_the_decisions():
    rng = np.random.default_rng(4)
    n = 300
    labels = rng.integers(0, 4, n)
    local_logits = rng.normal(size=(n, 4)).astype(np.float32) + 1.2 * np.eye(4)[labels]
    cloud_logits = rng.normal(size=(n, 4)).astype(np.float32) + 2.5 * np.eye(4)[labels]
    c = correctness(jnp.asarray(local_logits), jnp.asarray(cloud_logits), jnp.asarray(labels))
    offload = rng.random((2, n)) < 0.5
    config = EvaluationConfig(bootstrap_resamples=2000, bootstrap_seed=7)
    key = jax.random.key(0)
    rows = _comparisons(c, {"router_x": Decisions(np.array([0.3, 0.6]), offload)}, local_logits, key, config)
    assert [(r["baseline"], r["target"]) for r in rows] == [
        ("entropy", 0.3),
        ("entropy", 0.6),
        ("random", 0.3),
        ("random", 0.6),
    ]
    lc, cc = np.asarray(c.local_correct), np.asarray(c.cloud_correct)
    row = rows[1]
    mine = np.where(offload[1], cc, lc)
    # the entropy rule at 0.6: the 180 lowest-entropy samples local
    p = np.exp(local_logits - local_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -(p * np.log(p)).sum(-1)
    keep = np.zeros(n, bool)
    keep[np.argsort(entropy, kind="stable")[:180]] = True
    theirs = np.where(keep, lc, cc)
    assert row["difference"] == pytest.approx(mine.mean() - theirs.mean())
    assert row["baseline_local_rate"] == pytest.approx(0.6)
    wins, losses = int((mine & ~theirs).sum()), int((~mine & theirs).sum())
    assert row["discordant"] == [wins, losses]
    assert row["p_value"] == pytest.approx(scipy.stats.binomtest(wins, wins + losses, 0.5).pvalue)
    # the interval of this row alone, with the recorded seed and resamples
    alone = scipy.stats.bootstrap(
        ((mine.astype(np.int8) - theirs.astype(np.int8)),),
        np.mean,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert row["ci95"] == pytest.approx([alone.low, alone.high])
    assert row["ci95"][0] <= row["difference"] <= row["ci95"][1]


def test_given_thresholds_replace_the_calibrated_ones(tiny_run, tmp_path, capsys):
    assert cli.main(["route", "--run", str(tiny_run), "--grid", "0.3,0.7", "--max-epochs", "1"]) == 0
    scores = np.load(RunDir(tiny_run).family("logits").scores)
    record = json.loads(RunDir(tiny_run).family("logits").record.read_text())
    np.testing.assert_allclose(
        record["decision_thresholds"], calibrated_thresholds(scores["val"], (0.3, 0.7))
    )
    given = tmp_path / "thresholds.json"
    given.write_text(json.dumps({"logits": [-100.0, 100.0]}))  # offload everything, nothing
    assert cli.main(["evaluate", "--run", str(tiny_run), "--thresholds", str(given)]) == 0
    results = json.loads((RunDir(tiny_run).results).read_text())
    points = results["curves"]["router_logits_calibrated"]
    assert [p["local_rate"] for p in points] == [0.0, 1.0]
    assert [p["threshold"] for p in points] == [-100.0, 100.0]
    assert results["routers"]["router_logits"]["threshold_source"] == "given"
    capsys.readouterr()
    for bad, fragment in (
        ({"logits": [0.1]}, "gives 1 values for router family 'logits', which has 2 targets"),
        ({"nope": [0.1, 0.2]}, "names router family 'nope'"),
        ({"logits": [0.1, "x"]}, "must map router family names to lists of finite thresholds"),
    ):
        given.write_text(json.dumps(bad))
        assert cli.main(["evaluate", "--run", str(tiny_run), "--thresholds", str(given)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines


def test_a_score_family_is_one_router_calibrated_at_every_target(tiny_run, capsys):
    route = ["route", "--run", str(tiny_run), "--objective", "score", "--grid", "0.3,0.7"]
    assert cli.main([*route, "--max-epochs", "2"]) == 0
    family = RunDir(tiny_run).family("logits-score")
    record = json.loads(family.record.read_text())
    scores = np.load(family.scores)
    assert scores["val"].shape == (1, 150) and record["quality"] == "mean_accuracy_over_budgets"
    assert record["config"]["labels"] == "benefit" and len(record["best_epoch"]) == 1
    assert cli.main(["evaluate", "--run", str(tiny_run)]) == 0
    results = json.loads(RunDir(tiny_run).results.read_text())
    assert "router_logits_score" not in results["curves"]  # no thesis decision for a score
    points = results["curves"]["router_logits_score_calibrated"]
    thresholds = calibrated_thresholds(scores["val"][0], (0.3, 0.7))
    assert [p["threshold"] for p in points] == pytest.approx(list(thresholds))
    kept = (scores["test"][0][None].astype(np.float64) < thresholds[:, None]).mean(-1)
    assert [p["local_rate"] for p in points] == pytest.approx(list(kept))
    assert {c["mechanism"] for c in results["comparisons"]} == {"router_logits_score_calibrated"}
    capsys.readouterr()
    bad = ["route", "--run", str(tiny_run), "--objective", "score", "--labels", "oracle"]
    assert cli.main(bad) == 2
    assert "do not fit the score objective" in capsys.readouterr().err


def test_thresholds_that_are_not_a_file_and_names_that_clash(tiny_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["evaluate", "--run", str(tiny_run), "--thresholds", str(tmp_path)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert cli.main(["route", "--run", str(tiny_run), "--name", "mine-calibrated"]) == 2
    assert "would clash" in capsys.readouterr().err


def test_local_counts_round_half_up_in_double_precision():
    # float32 arithmetic would make 0.7 * 45 exactly 31.5 and round it up to 32
    np.testing.assert_array_equal(np.asarray(local_counts([0.7, 0.5, 0.3], 45)), [31, 23, 14])
    assert int(np.asarray(local_counts([0.5], 5))[0]) == 3  # halves go up
