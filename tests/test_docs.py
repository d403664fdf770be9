"""The documentation's code runs as written, and its extension points work from the public API."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


@pytest.mark.slow
def test_the_python_walk_through_runs_as_written(tmp_path: Path, fashion_mnist_ready):
    (block,) = python_blocks("python.md")
    env = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "runs/notebook/results.json").read_text())
    assert {p["target"] for p in results["curves"]["router_logits_calibrated"]} == {0.3, 0.54, 0.7}
    assert (tmp_path / "runs/notebook.png").stat().st_size > 10_000


def test_a_decision_rule_added_through_the_public_api_is_evaluated_and_reported(tiny_run):
    import ddnn_jax as ddnn
    from ddnn_jax.core import mechanisms

    rule = ddnn.DecisionRule("top_logit", lambda logits, key: logits.max(-1), colour="tab:cyan")
    ddnn.register_rule(rule)
    try:
        ddnn.route(tiny_run, ddnn.RouterConfig(targets=(0.3, 0.5), max_epochs=2, hidden=(8,)))
        ddnn.evaluate(tiny_run)
        report = ddnn.report(tiny_run).read_text()
    finally:
        del mechanisms.RULES["top_logit"]
    curve = {
        p["target"]: p for p in json.loads((tiny_run / "results.json").read_text())["curves"]["top_logit"]
    }
    # brute force: keep local the round(L0 * N) samples of highest top logit, first index first
    test = ddnn.read_outputs(tiny_run)["test"]
    n = len(test.labels)
    order = sorted(range(n), key=lambda i: (-float(test.local_logits[i].max()), i))
    for target in (0.3, 0.5):
        local = np.zeros(n, bool)
        local[order[: int(np.floor(target * n + 0.5))]] = True
        right = np.where(local, test.local_logits.argmax(-1), test.cloud_logits.argmax(-1)) == test.labels
        assert curve[target]["accuracy"] == pytest.approx(right.mean(), abs=1e-12)
        assert curve[target]["local_rate"] == pytest.approx(local.mean(), abs=1e-12)
    assert "| top_logit |" in report


def test_a_router_loss_added_through_the_public_api_is_the_one_trained(tiny_run):
    import optax

    import ddnn_jax as ddnn
    from ddnn_jax.core import router_losses

    # a loss that ignores the labels and asks every router to offload everything
    always = lambda logits, labels: optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits))
    ddnn.register_loss(ddnn.RouterLoss("always", "grid", always))
    try:
        config = ddnn.RouterConfig(
            targets=(0.3, 0.5), max_epochs=30, hidden=(16,), learning_rate=0.05, loss="always"
        )
        family = ddnn.route(tiny_run, config)
        with pytest.raises(ValueError, match="does not fit the score objective"):
            ddnn.RouterConfig(objective="score", labels="benefit", loss="always").check()
    finally:
        del router_losses.LOSSES["always"]
    assert family.name == "logits-always"
    default = ddnn.route(tiny_run, dataclasses.replace(config, loss=None))
    assert default.name == "logits"
    offloaded = lambda f: (ddnn.read_family_scores(f)["test"] >= 0).mean(-1)  # the thesis decision
    # at L0 = 0.5 half the labels say 'local': the default loss learns to keep some local
    assert offloaded(family).min() == 1.0 and offloaded(default)[1] < 0.9, offloaded(default)


def test_a_labelling_and_family_added_through_the_public_api_are_the_ones_trained(tiny_run):
    import ddnn_jax as ddnn
    from ddnn_jax.core import families, meta
    from ddnn_jax.jobs.run import planned_families

    # weights that leave every sample labelled 'local' out: the routers learn to offload all
    def offloads_only(c, labels, thresholds):
        g = len(labels)
        return (labels == 1).astype(np.float32), np.arange(g), (None,) * g

    ddnn.register_labelling(ddnn.Labelling("offloads-only", "grid", candidates=offloads_only))
    ddnn.register_family(ddnn.Family("logits-offl", "logits", labels="offloads-only", default=False))
    try:
        planned = planned_families(ddnn.RunPlan(targets=(0.3, 0.5), families=("logits-offl",)))
        assert list(planned) == ["logits-offl"] and planned["logits-offl"].labels == "offloads-only"
        config = dataclasses.replace(planned["logits-offl"], max_epochs=30, hidden=(16,), learning_rate=0.05)
        family = ddnn.route(tiny_run, config, name="logits-offl")
    finally:
        del meta.LABELLINGS["offloads-only"], families.FAMILIES["logits-offl"]
    default = ddnn.route(tiny_run, dataclasses.replace(config, labels="cost"))
    offloaded = lambda f: (ddnn.read_family_scores(f)["test"] >= 0).mean(-1)
    assert offloaded(family).min() == 1.0 and offloaded(default)[1] < 0.9, offloaded(default)
