"""``ddnn compare``: Welch's interval, TOST and the verdicts against independent computations,
on made-up studies, and the refusals."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import scipy.stats

from ddnn_jax import cli
from ddnn_jax.jobs.compare import compare_values, seeds_to_decide

A = [90.1, 90.5, 90.3]
B = [90.2, 90.6, 90.7]


def test_welch_interval_and_tost_match_a_hand_computation_and_scipys_tests():
    row = compare_values(A, B, margin=0.5)
    # By hand: d = 90.5 - 90.3 = 0.2; variances 0.04 and 0.07; se = sqrt(0.11 / 3) = 0.19149;
    # Welch df = (0.11/3)^2 / ((0.04/3)^2/2 + (0.07/3)^2/2) = 3.7231.
    assert row["difference"] == pytest.approx(0.2)
    se, df = math.sqrt(0.11 / 3), (0.11 / 3) ** 2 / ((0.04 / 3) ** 2 / 2 + (0.07 / 3) ** 2 / 2)
    assert (se, df) == pytest.approx((0.19149, 3.7231), rel=1e-4)
    half = scipy.stats.t.ppf(0.95, df) * se
    assert row["ci90"] == pytest.approx([0.2 - half, 0.2 + half])
    welch = scipy.stats.ttest_ind(B, A, equal_var=False)
    assert row["ci90"] == pytest.approx(list(welch.confidence_interval(0.90)))
    assert row["p_difference"] == pytest.approx(welch.pvalue)
    # TOST as two shifted one-sided Welch tests, the textbook way
    lower = scipy.stats.ttest_ind(np.add(B, 0.5), A, equal_var=False, alternative="greater").pvalue
    upper = scipy.stats.ttest_ind(np.subtract(B, 0.5), A, equal_var=False, alternative="less").pvalue
    assert row["p_tost"] == pytest.approx(max(lower, upper))
    assert row["verdict"] == "undecided"  # the interval reaches past +0.5


@pytest.mark.parametrize(
    "a, b, verdict",
    [
        ([90.0, 90.1, 90.2, 90.1], [90.1, 90.2, 90.1, 90.2], "equivalent"),  # close and tight
        ([90.0, 90.1, 90.2, 90.1], [91.5, 91.6, 91.4, 91.5], "different"),  # far and tight
        ([89.0, 91.0, 90.0], [90.5, 89.5, 91.5], "undecided"),  # too spread for 3 seeds
    ],
)
def test_verdicts(a, b, verdict):
    row = compare_values(a, b, margin=0.5)
    assert row["verdict"] == verdict
    low, high = row["ci90"]
    assert (verdict == "equivalent") == (low > -0.5 and high < 0.5)


def test_seeds_to_decide_is_the_first_count_that_decides_at_the_observed_spread():
    a, b = np.array([89.0, 91.0, 90.0]), np.array([90.5, 89.5, 91.5])
    need = seeds_to_decide(a, b, 0.5)
    assert need is not None and need["verdict"] == "different"  # d = 0.5, on the margin itself
    n = need["seeds"]

    def verdict_with(count):  # samples of ``count`` seeds with exactly the observed means and SDs
        grow = lambda x: x.mean() + x.std(ddof=1) * _unit(count)
        return compare_values(list(grow(a)), list(grow(b)), 0.5)["verdict"]

    assert verdict_with(n) == "different" and verdict_with(n - 1) == "undecided"


def _unit(n):
    """n values with mean 0 and sample standard deviation 1."""
    x = np.linspace(-1, 1, n)
    return (x - x.mean()) / x.std(ddof=1)


def _made_up_study(root, pristine, shifts, **config_changes):
    """A study of runs that are the pristine run's records with made-up accuracies."""
    config = json.loads((pristine / "config.json").read_text())
    results = json.loads((pristine / "results.json").read_text())
    for seed, shift in enumerate(shifts):
        run = root / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({**config, **config_changes, "seed": seed}))
        (run / "run_plan.json").write_text((pristine / "run_plan.json").read_text())
        made_up = json.loads(json.dumps(results))
        made_up["made_from"] = hashlib.sha256(f"{run}".encode()).hexdigest()  # a run of its own
        made_up["edge_only_accuracy"] += shift / 100
        for points in made_up["curves"].values():
            for point in points:
                point["accuracy"] += shift / 100
        (run / "results.json").write_text(json.dumps(made_up))
    return root


def test_compare_prints_a_verdict_for_every_row_and_writes_its_files(tmp_path, capsys, pristine):
    a = _made_up_study(tmp_path / "jax", pristine, [0.0, 0.1, -0.1])
    b = _made_up_study(tmp_path / "torch", pristine, [0.05, 0.15, -0.05], framework="torch")
    assert cli.main(["compare", str(a), str(b), "--margin", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    value = json.loads((tmp_path / "compare_jax_vs_torch" / "compare.json").read_text())
    assert value["differing_field"] == "train.framework" and value["values"] == {"a": "jax", "b": "torch"}
    assert len(lines) == len(value["rows"]) + 1 and all("->" in line for line in lines[:-1])
    local = next(r for r in value["rows"] if r["kind"] == "exit" and r["name"] == "local")
    base = 100 * json.loads((pristine / "results.json").read_text())["edge_only_accuracy"]
    want = compare_values([base, base + 0.1, base - 0.1], [base + 0.05, base + 0.15, base - 0.05], 0.5)
    assert local["difference"] == pytest.approx(0.05) and local["ci90"] == pytest.approx(want["ci90"])
    assert local["verdict"] == "equivalent"
    cloud = next(r for r in value["rows"] if r["kind"] == "exit" and r["name"] == "cloud")
    assert cloud["difference"] == 0 and cloud["verdict"] == "equivalent"  # constant on both sides
    for name in ("compare.md", "compare.png"):
        assert (tmp_path / "compare_jax_vs_torch" / name).stat().st_size > 0


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"dataset": "mnist"}, "holds fashion_mnist runs and"),
        ({"framework": "torch", "epochs": 3}, "differ in 2 fields (train.epochs, train.framework)"),
    ],
)
def test_studies_of_other_datasets_or_differing_in_two_fields_are_refused(
    tmp_path, capsys, pristine, changes, fragment
):
    a = _made_up_study(tmp_path / "a", pristine, [0.0, 0.1])
    b = _made_up_study(tmp_path / "b", pristine, [0.0, 0.1], **changes)
    assert cli.main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "compare_a_vs_b").exists()
