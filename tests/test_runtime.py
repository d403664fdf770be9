"""The runtime: JAX's persistent compilation cache, deterministic XLA, and a whole run's stages."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CACHE_ENV, PRISTINE_FLAGS, PRISTINE_PLAN, run_cli
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
    assert os.environ[runtime.CUBLAS_WORKSPACE] == runtime.CUBLAS_DETERMINISTIC  # for PyTorch's CUDA
    runtime.configure(tmp_path / "cache", deterministic=False)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    assert runtime.CUBLAS_WORKSPACE not in os.environ
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


def _bench_run(out, cache, *plan):
    """``ddnn bench run`` of the pristine run's flags in a fresh interpreter: its stage lines
    and its total."""
    result = run_cli("bench", "run", "--out", str(out), "--compile-cache", str(cache), *PRISTINE_FLAGS, *plan)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return [line for line in lines if line["measure"] == "run_stage"], lines[-1]


@pytest.mark.slow
def test_a_second_identical_run_compiles_nothing_and_gives_the_same_numbers(tmp_path, pristine):
    """The session's pristine run, made in a test process, put every program it compiled into
    the session's cache (conftest keeps them all): the same run in a new interpreter compiles
    none of them and computes the same numbers, bit for bit."""
    cache = os.environ[CACHE_ENV]
    stages, total = _bench_run(tmp_path / "again", cache, *PRISTINE_PLAN)
    assert total["compiled_programs"] == 0 and total["programs_from_cache"] > 0
    assert 0 < total["stages_seconds"] <= total["wall_seconds"]  # consecutive stages within the run
    expected = {"ddnn train", "ddnn collect", "router logits", "evaluate", "report"}
    assert expected <= {s["stage"] for s in stages}
    a, b = (json.loads((root / "results.json").read_text()) for root in (pristine, tmp_path / "again"))
    assert a["curves"] == b["curves"] and a["comparisons"] == b["comparisons"]
    metrics = [
        [
            {k: v for k, v in json.loads(row).items() if k != "seconds"}
            for row in (root / "metrics.jsonl").read_text().splitlines()
        ]
        for root in (pristine, tmp_path / "again")
    ]
    assert metrics[0] == metrics[1]
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["runtime"]["compilation_cache"] == str(cache) and config["runtime"]["deterministic"]
