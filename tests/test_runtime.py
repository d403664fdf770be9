"""The runtime: JAX's persistent compilation cache, deterministic XLA, and a whole run's stages."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from ddnn_jax.common import runtime


@pytest.fixture
def restored_runtime():
    """Puts JAX's cache settings and XLA_FLAGS back as they were after the test."""
    cache_dir, flags = jax.config.values["jax_compilation_cache_dir"], os.environ.get("XLA_FLAGS")
    yield
    runtime.configure(cache_dir)
    if flags is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = flags


def test_determinism_is_asked_of_xla_unless_traded_away(restored_runtime, tmp_path):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    configured = runtime.configure(tmp_path / "cache")
    assert configured.deterministic and configured.compilation_cache == str(tmp_path / "cache")
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=1",
        runtime.DETERMINISTIC_FLAG,
    ]
    runtime.configure(tmp_path / "cache", deterministic=False)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    assert runtime.describe()["deterministic"] is False


def test_a_program_compiled_once_is_read_back_from_the_cache(restored_runtime, tmp_path):
    runtime.configure(tmp_path / "cache")
    marker = float(np.random.default_rng().random())  # a program no other test compiled

    def program():
        return jax.jit(lambda x: jnp.tanh(x) * marker + 1.0)

    counter = runtime.CompileCounter()
    try:
        first = program()(np.ones(5, np.float32))
        assert (counter.compiled, counter.from_cache) == (1, 0)
        assert any((tmp_path / "cache").iterdir())  # written to disk
        jax.clear_caches()  # as a new process would start: nothing compiled in memory
        np.testing.assert_array_equal(program()(np.ones(5, np.float32)), first)
        assert (counter.compiled, counter.from_cache) == (1, 1)
    finally:
        counter.close()
    runtime.configure(None)
    assert runtime.describe()["compilation_cache"] is None


def test_an_unusable_cache_directory_is_refused_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("train", "--out", str(tmp_path / "run"), "--compile-cache", str(blocker / "cache"))
    assert result.returncode == 2
    assert result.stderr.startswith("ddnn: error: --compile-cache") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


# One epoch on 256 images and one router family (that families differing in data only share one
# program is test_router's test_families_that_differ_in_data_only_share_one_compiled_program).
RUN = ["--dataset", "fashion_mnist", "--epochs", "1", "--limit-train", "256", "--limit-eval", "500"]
RUN += ["--inputs", "logits", "--families", "logits"]
RUN += ["--grid", "0.5", "--no-ablations", "--sweep-weights", "none", "--no-inference-timing", "--quiet"]


def _bench_run(out, cache):
    result = run_cli("bench", "run", "--out", str(out), "--compile-cache", str(cache), *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return [line for line in lines if line["measure"] == "run_stage"], lines[-1]


@pytest.mark.slow
def test_a_second_identical_run_compiles_nothing_and_gives_the_same_numbers(tmp_path, fashion_mnist_ready):
    cache = tmp_path / "xla-cache"
    first_stages, first = _bench_run(tmp_path / "first", cache)
    second_stages, second = _bench_run(tmp_path / "second", cache)
    assert first["compiled_programs"] > 0
    assert second["compiled_programs"] == 0 and second["programs_from_cache"] > 0
    for total, stages in ((first, first_stages), (second, second_stages)):
        assert 0 < total["stages_seconds"] <= total["wall_seconds"]  # consecutive stages within the run
        assert {"ddnn train", "ddnn collect", "evaluate", "report"} <= {s["stage"] for s in stages}
    assert "router logits" in {s["stage"] for s in second_stages}
    # Bit for bit: the same seed gives the same numbers, run after run.
    a, b = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("first", "second"))
    assert a["curves"] == b["curves"] and a["comparisons"] == b["comparisons"]
    metrics = [
        [
            {k: v for k, v in json.loads(row).items() if k != "seconds"}
            for row in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
        for name in ("first", "second")
    ]
    assert metrics[0] == metrics[1]
    config = json.loads((tmp_path / "second" / "config.json").read_text())
    assert config["runtime"]["compilation_cache"] == str(cache) and config["runtime"]["deterministic"]
