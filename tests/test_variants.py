"""The router variants (core.variants): their labels, weights, losses and inputs against brute
force on hand-made arrays, their effect on a trained router where the effect is known, and every
one of them trained by ``ddnn run --families variants`` on a real 2-epoch run."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PRISTINE_EVAL, PRISTINE_FLAGS
from ddnn_jax import cli
from ddnn_jax.core.families import input_kind
from ddnn_jax.core.labels import correctness
from ddnn_jax.core.meta import LABELLINGS, meta_set
from ddnn_jax.core.router_losses import LOSSES, weighted_mean
from ddnn_jax.core.router_net import RouterConfig, edge_inputs, router_flops
from ddnn_jax.core.router_training import (
    GridResult,
    make_grid_predictor,
    make_grid_trainer,
    mean_accuracy_over_budgets,
    model_keys,
    select_candidates,
)
from ddnn_jax.core.variants import border, budget


def _exits(n=400, seed=0, classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    onehot = np.eye(classes, dtype=np.float32)[labels]
    local = rng.normal(size=(n, classes)).astype(np.float32) + 1.5 * onehot
    cloud = rng.normal(size=(n, classes)).astype(np.float32) + 3.0 * onehot
    return local, cloud, labels.astype(np.int32)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _brute_benefit(local, cloud, labels):
    rows = np.arange(len(labels))
    return (
        _softmax(local.astype(np.float64))[rows, labels] * -1
        + _softmax(cloud.astype(np.float64))[rows, labels]
    )


def _meta(name, targets=(0.2, 0.5, 0.8), seed=0):
    splits = {
        s: correctness(*map(jnp.asarray, _exits(seed=seed + i))) for i, s in enumerate(("train", "val"))
    }
    return splits, meta_set(LABELLINGS[name], splits, np.asarray(targets, np.float32))


def test_class_balanced_weights_give_both_labels_half_the_weight():
    splits, meta = _meta("balanced")
    labels, weights = meta.targets["train"], meta.candidates.weights
    n = labels.shape[1]
    for g in range(3):
        for y in (0, 1):
            assert weights[g][labels[g] == y].sum() == pytest.approx(n / 2, rel=1e-5)
    np.testing.assert_array_equal(meta.candidates.target_of, [0, 1, 2])
    np.testing.assert_array_equal(labels, _meta("cost")[1].targets["train"])  # the cost labels


def test_cost_weights_are_the_regret_of_a_wrong_decision():
    splits, meta = _meta("cost-weighted")
    benefit = np.asarray(splits["train"].benefit, np.float64)
    for g, threshold in enumerate(meta.thresholds):
        regret = np.abs(benefit - threshold)
        np.testing.assert_allclose(meta.candidates.weights[g], regret / regret.mean(), rtol=1e-5)


def test_border_trains_one_candidate_per_cutoff_and_leaves_the_border_out():
    splits, meta = _meta("border", targets=(0.3, 0.7))
    t = len(border.TAUS)
    np.testing.assert_array_equal(meta.candidates.target_of, np.repeat([0, 1], t))
    assert meta.candidates.values == border.TAUS * 2
    near = np.abs(np.asarray(splits["train"].benefit))
    for m, tau in enumerate(meta.candidates.values):
        np.testing.assert_array_equal(meta.candidates.weights[m], (near >= tau).astype(np.float32))
    # every candidate of a target learns that target's labels, on every split
    cost = _meta("cost", targets=(0.3, 0.7))[1]
    for split in ("train", "val"):
        np.testing.assert_array_equal(meta.targets[split], cost.targets[split][meta.candidates.target_of])


def test_validation_keeps_the_best_candidate_of_each_target():
    rng = np.random.default_rng(3)
    val = rng.random((6, 5))
    val[:, 3:] = np.nan  # epochs not run
    fake = GridResult(
        variables={"w": jnp.arange(6.0)},
        train_quality=jnp.asarray(val),
        val_quality=jnp.asarray(val),
        best_epoch=jnp.arange(6),
        epochs_run=jnp.full(6, 3),
    )
    target_of = np.asarray([0, 0, 0, 1, 1, 1])
    kept_result, kept = select_candidates(fake, target_of)
    brute = [3 * g + int(np.argmax(np.nanmax(val[3 * g : 3 * g + 3], -1))) for g in (0, 1)]
    np.testing.assert_array_equal(kept, brute)
    np.testing.assert_array_equal(np.asarray(kept_result.variables["w"]), np.asarray(brute, np.float32))


def test_the_separable_benefit_adds_the_exits_entropies():
    local, cloud, labels = _exits()
    c = correctness(jnp.asarray(local), jnp.asarray(cloud), jnp.asarray(labels))
    entropy = lambda z: -(_softmax(z) * np.log(_softmax(z))).sum(-1) / np.log(z.shape[-1])
    brute = (
        _brute_benefit(local, cloud, labels)
        + entropy(local.astype(np.float64))
        - entropy(cloud.astype(np.float64))
    )
    np.testing.assert_allclose(LABELLINGS["separable"].benefit(c), brute, atol=1e-5)
    splits, meta = _meta("separable")
    sep = LABELLINGS["separable"].benefit(splits["train"])
    np.testing.assert_allclose(meta.thresholds, np.quantile(sep, [0.2, 0.5, 0.8]), atol=1e-6)
    np.testing.assert_array_equal(meta.targets["train"], sep[None] >= meta.thresholds[:, None])


def test_focal_loss_matches_its_formula_and_is_bce_at_gamma_zero():
    z = jnp.asarray([-3.0, -0.5, 0.0, 0.7, 4.0])
    y = jnp.asarray([0, 1, 1, 0, 1])
    p = 1 / (1 + np.exp(-np.asarray(z, np.float64)))
    p_t = np.where(np.asarray(y) == 1, p, 1 - p)
    focal = LOSSES["focal"].fn
    np.testing.assert_allclose(focal(z, y, focal_gamma=2.0), -((1 - p_t) ** 2) * np.log(p_t), rtol=1e-5)
    np.testing.assert_allclose(focal(z, y, focal_gamma=0.0), LOSSES["bce"].fn(z, y), rtol=1e-6)
    weights = jnp.asarray([1.0, 0.0, 2.0, 0.0, 1.0])
    per_sample = np.asarray(LOSSES["bce"].fn(z, y))
    expected = (per_sample[0] + 2 * per_sample[2] + per_sample[4]) / 4
    assert float(weighted_mean(jnp.asarray(per_sample), weights)) == pytest.approx(expected, rel=1e-6)


def test_the_deferral_surrogate_fits_each_exit_and_scores_the_gain():
    outputs = jnp.asarray([[2.0, -1.0], [-0.5, 0.5], [0.0, 3.0]])
    columns = jnp.asarray([[0.0, 1, 0], [0.0, 0, 1], [0.0, 1, 1]])
    sig = lambda v: 1 / (1 + np.exp(-np.asarray(v, np.float64)))
    bce = lambda z, y: -(y * np.log(sig(z)) + (1 - y) * np.log(1 - sig(z)))
    loss = bce(outputs[:, 0], columns[:, 1]) + bce(outputs[:, 1], columns[:, 2])
    np.testing.assert_allclose(LOSSES["defer"].fn(outputs, columns), loss, rtol=1e-5)
    np.testing.assert_allclose(
        LOSSES["defer"].score(outputs), sig(outputs[:, 1]) - sig(outputs[:, 0]), rtol=1e-6
    )


def test_a_deferral_router_learns_the_order_of_the_gain():
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        local = (x[:, 0] < rng.normal(size=n)).astype(np.float32)  # x[0] high: the edge errs
        cloud = (x[:, 1] > rng.normal(size=n) - 1).astype(np.float32)  # x[1] low: the cloud errs
        return x, np.stack([cloud - local, local, cloud], -1)[None]

    x, y = split(2048)
    xv, yv = split(1024)
    config = RouterConfig(objective="score", labels="benefit", loss="defer", hidden=(32,), max_epochs=30)
    config.check()
    weights = np.ones((1, len(x)), np.float32)
    result = make_grid_trainer(config, len(x))(model_keys(config), x, y, weights, xv, yv)
    scores = np.asarray(make_grid_predictor(config)(result.variables, xv))[0]
    local, cloud = yv[0, :, 1], yv[0, :, 2]
    quality = lambda s: float(mean_accuracy_over_budgets(jnp.asarray(s), local, cloud))
    # P(cloud right) - P(local right) given x, known here in closed form
    phi = lambda v: 0.5 * (1 + jax.scipy.special.erf(v / np.sqrt(2)))
    ideal = np.asarray(phi(xv[:, 1] + 1) - (1 - phi(xv[:, 0])))
    assert quality(scores) > quality(rng.normal(size=len(xv))) + 0.03
    assert quality(scores) == pytest.approx(quality(ideal), abs=0.01)


def test_zero_weights_keep_mislabelled_samples_out_of_training():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1024, 4)).astype(np.float32)
    clean = (x[:, 0] > 0).astype(np.int32)
    corrupt = x[:, 1] > 0
    y = np.where(corrupt, 1 - clean, clean)[None]  # half the samples carry the opposite rule
    xv = rng.normal(size=(512, 4)).astype(np.float32)
    yv = (xv[:, 0] > 0).astype(np.int32)[None]
    config = RouterConfig(targets=(0.5,), hidden=(16,), max_epochs=20, batch_size=64, dropout_rate=0.0)
    trainer = make_grid_trainer(config, len(x))
    best = lambda w: float(np.nanmax(np.asarray(trainer(model_keys(config), x, y, w, xv, yv).val_quality)))
    weighted = best((~corrupt).astype(np.float32)[None])
    plain = best(np.ones((1, len(x)), np.float32))
    assert weighted > 0.93 and plain < 0.7, (weighted, plain)


def test_the_hybrid_input_appends_pooled_features_and_counts_its_flops():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 10)).astype(np.float32)
    z = rng.normal(size=(3, 14, 14, 32)).astype(np.float32)
    kind = input_kind("logits-hybrid")
    assert kind.needs_features and not kind.high_dimensional
    inputs = edge_inputs(kind, logits, z, None)
    np.testing.assert_allclose(inputs, np.concatenate([logits, z.mean((1, 2))], -1), rtol=1e-6)
    config = RouterConfig(inputs="logits-hybrid")
    widths = [42, 256, 128, 64, 32, 1]
    assert router_flops(config, (42,)) == sum(2 * a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    assert kind.extra_flops is not None and kind.extra_flops((14, 14, 32)) == 14 * 14 * 32
    assert router_flops(
        dataclasses.replace(config, objective="score", labels="benefit", loss="defer"), (10,)
    ) == (router_flops(RouterConfig(), (10,)) + 2 * 32)


@pytest.mark.slow
def test_every_variant_trains_through_ddnn_run_and_is_summarised(pristine, tmp_path):
    from ddnn_jax.core.curves import area_under_curve
    from ddnn_jax.core.families import FAMILIES, calibrated, curve_name

    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    plan = [
        "--inputs",
        "logits,logits-hybrid",
        "--grid",
        "0.3,0.5,0.7",
        "--no-ablations",
        "--sweep-weights",
        "none",
    ]
    plan += ["--no-inference-timing", "--quiet", "--families", "variants"]
    assert cli.main(["run", *PRISTINE_FLAGS, *plan, "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    summary, curves = results["summary"], results["curves"]
    variants = [f for f in FAMILIES.values() if not f.default]
    assert {f.name for f in variants} <= set(p.name for p in (run / "routers").iterdir())
    edge, cloud = results["edge_only_accuracy"], results["cloud_only_accuracy"]
    auc = lambda name: area_under_curve(
        [p["local_rate"] for p in curves[name]], [p["accuracy"] for p in curves[name]], edge, cloud
    )
    for family in variants:
        name = calibrated(curve_name(family.name))
        recovered = (auc(name) - auc("random")) / (auc("oracle") - auc("random"))
        assert summary[name]["oracle_gap_recovered"] == pytest.approx(recovered, abs=1e-9), name
    record = json.loads((run / "routers" / "logits-border" / "router.json").read_text())
    assert len(record["selected"]) == 3 and set(record["selected"]) <= set(border.TAUS)
    assert (run / "oof" / "train.npz").is_file() and len(list((run / "oof").glob("fold_*"))) == 3
    hybrid = json.loads((run / "routers" / "logits-hybrid" / "router.json").read_text())
    focal = json.loads((run / "routers" / "logits-focal" / "router.json").read_text())
    assert hybrid["flops_per_sample"] > focal["flops_per_sample"] > 0
    assert "oracle gap recovered" in (run / "report.md").read_text()


def test_benefit_ranks_reproduce_the_cost_labels_at_every_budget():
    splits, meta = _meta("cost", targets=np.linspace(0.05, 0.95, 19))
    benefit = np.asarray(splits["train"].benefit)
    tied = np.concatenate([benefit, np.zeros(50, np.float32)])  # a block of equal benefits
    for values in (benefit, tied):
        ranks = budget.benefit_ranks(values, values)
        thresholds = np.quantile(values.astype(np.float32), np.linspace(0.05, 0.95, 19))
        for threshold, level in zip(thresholds, np.linspace(0.05, 0.95, 19), strict=True):
            np.testing.assert_array_equal(ranks >= np.float32(level), values >= np.float32(threshold))


def test_a_budget_router_trains_once_and_scores_every_target(tiny_run):
    import ddnn_jax as ddnn
    from ddnn_jax.core.router_net import edge_inputs

    config = RouterConfig(objective="budget", targets=(0.2, 0.5, 0.8), hidden=(16,), max_epochs=20)
    family = ddnn.route(tiny_run, config)
    assert family.name == "logits-budget"
    record = ddnn.read_family(family)
    scores = ddnn.read_family_scores(family)
    assert scores["test"].shape == (3, 400) and len(record.best_epoch) == 1  # one network
    kept = (scores["test"] < 0).mean(-1)  # the thesis decision at each budget
    assert kept[0] < kept[1] < kept[2], kept
    outputs = ddnn.read_outputs(ddnn.RunDir(tiny_run))
    inputs = edge_inputs(config.kind, outputs["test"].local_logits, None, None)
    for g in range(3):  # the deployed router at target g computes what evaluate scored
        deployed = ddnn.deployed_router(family, g)
        np.testing.assert_allclose(
            np.asarray(deployed.logits(jnp.asarray(inputs))), scores["test"][g], atol=1e-5
        )
    results = ddnn.evaluate(tiny_run)
    points = results["routers"]["router_logits_budget"]["points"]
    assert [p["target"] for p in points] == [0.2, 0.5, 0.8]


def test_valfit_cross_fits_on_validation_and_deploys_the_mean_of_its_folds(tiny_run):
    import ddnn_jax as ddnn
    from ddnn_jax.core.router_net import edge_inputs
    from ddnn_jax.core.variants import valfit

    held_out, rest = valfit.folds(153, seed=0)
    assert [len(f) for f in held_out] == [30] * 5 and len(rest) == 3
    assert sorted(np.concatenate([*held_out, rest]).tolist()) == list(range(153))
    per_fold = [np.full((2, 153), float(k)) for k in range(5)]
    oof = valfit.out_of_fold(per_fold, held_out)
    for k, rows in enumerate(held_out):
        assert (oof[:, rows] == k).all()
    assert (oof[:, rest] == 2.0).all()  # the mean over folds

    config = RouterConfig(targets=(0.3, 0.7), hidden=(16,), max_epochs=10, fit_split="val")
    family = ddnn.route(tiny_run, config, name="logits-valfit")
    record, scores = ddnn.read_family(family), ddnn.read_family_scores(family)
    assert record.members == valfit.FOLDS and len(record.best_epoch) == 2 * valfit.FOLDS
    outputs = ddnn.read_outputs(ddnn.RunDir(tiny_run))
    c_val = correctness(
        *(
            jnp.asarray(a)
            for a in (outputs["val"].local_logits, outputs["val"].cloud_logits, outputs["val"].labels)
        )
    )
    np.testing.assert_allclose(
        record.benefit_thresholds, np.quantile(np.asarray(c_val.benefit), (0.3, 0.7)), atol=1e-6
    )
    inputs = edge_inputs(config.kind, outputs["test"].local_logits, None, None)
    for g in range(2):  # deployed: the mean of the fold routers, as evaluate scored the test split
        deployed = ddnn.deployed_router(family, g)
        np.testing.assert_allclose(
            np.asarray(deployed.logits(jnp.asarray(inputs))), scores["test"][g], atol=1e-5
        )
    # the thresholds come from out-of-fold validation scores: each keeps its target there
    kept = (scores["val"] < np.asarray(record.decision_thresholds)[:, None]).mean(-1)
    np.testing.assert_allclose(kept, (0.3, 0.7), atol=1 / 150)


def test_out_of_fold_runs_leave_their_fold_out(fashion_mnist_ready):
    from ddnn_jax.core.config import TrainConfig
    from ddnn_jax.core.variants.out_of_fold import fold_of, trained_on
    from ddnn_jax.rundir import run_data

    assignment = fold_of(302, 3, seed=4)
    assert np.bincount(assignment).tolist() == [101, 101, 100]
    assert not np.array_equal(assignment, fold_of(302, 3, seed=5))
    sizes = {int(trained_on(302, 3, 4, k).sum()) for k in range(3)}
    assert sizes == {200}  # equal: one compiled program for every fold run
    config = TrainConfig(limit_train=302, limit_eval=64, seed=4)
    whole = run_data(config)
    seen = []
    for k in range(3):
        fold = run_data(dataclasses.replace(config, holdout_fold=k, holdout_folds=3))
        kept = trained_on(302, 3, 4, k)
        assert not (kept & (assignment == k)).any()  # never its own fold
        np.testing.assert_array_equal(fold.train.labels, whole.train.labels[kept])
        np.testing.assert_array_equal(fold.val.labels, whole.val.labels)  # the same validation split
        np.testing.assert_allclose(fold.mean, whole.mean)  # and the same normalisation
        seen.append(set(np.flatnonzero(kept)))
    assert set.intersection(*seen) == set()  # no sample is trained on by every fold run


@pytest.mark.slow
def test_a_cotrained_router_trains_resumes_and_is_a_family(pristine, tmp_path):
    import ddnn_jax as ddnn
    from ddnn_jax.core.config import TrainConfig
    from ddnn_jax.core.router_net import edge_inputs
    from ddnn_jax.jobs.training import run_training

    plain = [json.loads(line) for line in (pristine / "metrics.jsonl").read_text().splitlines()]
    ddnn_only = lambda rows: [
        {k: v for k, v in r.items() if k not in ("seconds", "router_loss")} for r in rows
    ]
    base = TrainConfig(
        epochs=2, batch_size=128, seed=0, limit_train=512, limit_eval=PRISTINE_EVAL, cotrain_warmup=1
    )

    class Crash(Exception):
        pass

    def crash_in_epoch_2(epoch):  # before epoch 2 is checkpointed, as a kill would
        if epoch == 2:
            raise Crash

    detached = tmp_path / "detached"
    config = dataclasses.replace(base, cotrain_router="detached")
    with pytest.raises(Crash):
        run_training(config, detached, on_epoch_trained=crash_in_epoch_2)
    run_training(config, detached)  # resumes from epoch 1
    rows = [json.loads(line) for line in (detached / "metrics.jsonl").read_text().splitlines()]
    assert ddnn_only(rows) == ddnn_only(plain)  # the DDNN trains exactly as without the router
    assert rows[1]["router_loss"] > 0

    ddnn.collect(detached)
    family = ddnn.RunDir(detached).family("cotrain")
    scores = ddnn.read_family_scores(family)
    outputs = ddnn.read_outputs(detached)
    inputs = edge_inputs(input_kind("logits"), outputs["test"].local_logits, None, None)
    deployed = ddnn.deployed_router(family, 0)
    np.testing.assert_allclose(np.asarray(deployed.logits(jnp.asarray(inputs))), scores["test"][0], atol=1e-5)
    results = ddnn.evaluate(detached)
    assert "oracle_gap_recovered" in results["summary"]["router_cotrain_calibrated"]

    joint = tmp_path / "joint"
    run_training(dataclasses.replace(base, cotrain_router="joint", cotrain_weight=0.5), joint)
    rows = [json.loads(line) for line in (joint / "metrics.jsonl").read_text().splitlines()]
    assert ddnn_only(rows)[0] == ddnn_only(plain)[0]  # the warm-up epoch: the router not yet on
    assert rows[1]["train_loss"] != plain[1]["train_loss"]  # then its loss moves the edge
