"""ddnn export-edge and ddnn edge --engine onnx on the pristine run: the graph reproduces the
run's outputs and decisions, and an edge without JAX reports what the JAX edge reports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import PRISTINE_EVAL, free_port
from ddnn_jax.cli.device import wants_device_edge
from ddnn_jax.common.errors import UsageError
from ddnn_jax.deploy import exported
from ddnn_jax.deploy.cloud import BackgroundServer, CloudHalf, cloud_app
from ddnn_jax.deploy.device_edge import DeviceEdgeConfig, run_device_edge
from ddnn_jax.deploy.edge import EdgeConfig, run_edge

pytest.importorskip("onnxruntime")
from ddnn_jax.interop.export_edge import ExportConfig, VerificationFailed, export_edge, verify  # noqa: E402

TARGET = 0.5  # the pristine run's router target
pytestmark = pytest.mark.slow

# An interpreter in which JAX, Flax and TensorFlow cannot be imported, running 'ddnn ARGS'.
WITHOUT_JAX = textwrap.dedent(
    """
    import importlib.abc, sys
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow"):
                raise ImportError(f"{name} is not installed here")
    sys.meta_path.insert(0, Refuse())
    from ddnn_jax.cli import main
    code = main(sys.argv[1:])
    assert "jax" not in sys.modules
    sys.exit(code)
    """
)


@pytest.fixture(scope="module")
def export(pristine, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    return export_edge(pristine, out, ExportConfig(int8=True, calibration=64))


@pytest.fixture(scope="module")
def server(pristine):
    with BackgroundServer(cloud_app(CloudHalf.load(pristine, max_batch=64))) as url:
        yield url


def test_the_graph_reproduces_the_runs_outputs_and_decisions(pristine, export):
    out, info = export
    check = info["verification"]
    assert check["passed"] and check["samples"] == PRISTINE_EVAL
    assert check["local_predictions_differing"] == 0 and check["local_logits_max_abs_diff"] <= 1e-4
    assert [d["target"] for d in check["decisions"]] == [TARGET] and check["decisions"][0]["differing"] == 0
    assert info["decisions"][0]["column"] == 0 and info["made_from"] and info["checkpoint"]
    assert [o["name"] for o in info["outputs"]] == ["local_logits", "router_logit", "z"]
    assert info["input"] == {"name": "images", "shape": ["N", 28, 28, 1], "dtype": "float32"}
    assert set(info["files"]) == {"edge.onnx", "edge.int8.onnx"}
    assert info["int8"]["bytes"] < info["files"]["edge.onnx"]["bytes"] / 2  # int8 weights
    # what a device checks itself on, beside the graph
    samples = exported.read_samples(exported.read_export(out))
    assert samples["images"].shape == (PRISTINE_EVAL, 28, 28, 1) and samples["images"].dtype == np.uint8
    assert samples["router_logit"].shape == (PRISTINE_EVAL, 1)


def test_a_graph_that_computes_something_else_is_caught(export):
    out, info = export
    samples = exported.read_samples(exported.read_export(out))
    from ddnn_jax.deploy.runtimes import runner

    run_graph = runner(out / "edge.onnx")
    swapped = lambda images: (lambda local, router, z: (local[:, ::-1], router, z))(*run_graph(images))
    reference = {**samples, "sent": run_graph(samples["images"][:64])[2]}
    reference = {k: v[:64] for k, v in reference.items()}
    decisions = [exported.Decision(TARGET, 0, info["decisions"][0]["threshold"])]
    assert verify(run_graph, reference, decisions, "z")["passed"]
    result = verify(swapped, reference, decisions, "z")
    assert not result["passed"] and result["local_predictions_differing"] > 0


def test_litert_converts_and_verifies(pristine, tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    out, info = export_edge(pristine, tmp_path / "litert", ExportConfig(format="litert"))
    assert info["verification"]["passed"] and info["input"]["shape"][0] == 1
    assert set(info["files"]) == {"edge.tflite"} and exported.read_export(out).graph().suffix == ".tflite"


def test_a_fixed_batch_graph_replaces_an_earlier_export(pristine, tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "export.json").write_text("{}")
    out, info = export_edge(pristine, earlier, ExportConfig(batch=7))  # 1000 = 142 x 7 + 6: one padded
    assert info["input"]["shape"][0] == 7 and info["verification"]["passed"]
    assert exported.read_export(out).info["input"]["shape"][0] == 7
    (tmp_path / "notes").mkdir()
    with pytest.raises(UsageError, match="not an export"):
        export_edge(pristine, tmp_path / "notes", ExportConfig())
    with pytest.raises(UsageError, match="no router family 'nope'"):
        export_edge(pristine, tmp_path / "x", ExportConfig(family="nope"))


def test_the_edge_without_jax_reports_what_the_jax_edge_reports(pristine, export, server, tmp_path):
    out, _ = export
    args = ["edge", "--engine", "onnx", "--export", str(out), "--server", server, "--target", str(TARGET)]
    args += ["--batch", "16", "--limit", "512", "--out", str(tmp_path / "onnx.json"), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_JAX, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    onnx_report = json.loads((tmp_path / "onnx.json").read_text())
    _, jax_report = run_edge(
        pristine, EdgeConfig(server=server, target=TARGET, batch=16, limit=512), out=tmp_path / "jax.json"
    )
    for key in (
        "accuracy",
        "local_rate",
        "offloaded",
        "answered_by_cloud",
        "threshold",
        "made_from",
        "checkpoint",
    ):
        assert onnx_report[key] == jax_report[key], key
    assert onnx_report["bytes"]["uplink"] == jax_report["bytes"]["uplink"]
    assert onnx_report["in_process"]["decisions_differing"] == 0
    assert onnx_report["in_process"]["accuracy"] == jax_report["in_process"]["accuracy"]
    assert onnx_report["engine"]["runtime"] == "onnxruntime"


def test_the_device_edge_refuses_what_it_cannot_do(export, server, tmp_path):
    out, _ = export
    config = DeviceEdgeConfig(export=str(out), server=server, target=TARGET, limit=8)
    with pytest.raises(UsageError, match="decides at L0 in 0.5, not 0.3"):
        run_device_edge(dataclasses.replace(config, target=0.3), out=tmp_path / "r.json")
    with pytest.raises(UsageError, match="makes z: --wire bottleneck"):
        run_device_edge(dataclasses.replace(config, wire="bottleneck"), out=tmp_path / "r.json")
    with pytest.raises(UsageError, match="has no export.json"):
        run_device_edge(dataclasses.replace(config, export=str(tmp_path)), out=tmp_path / "r.json")
    _, report = run_device_edge(
        dataclasses.replace(config, wire="int8", graph="edge.int8.onnx"), out=tmp_path / "q.json"
    )
    assert report["samples"] == 8 and report["engine"]["graph"] == "edge.int8.onnx"
    down = dataclasses.replace(config, server=f"http://127.0.0.1:{free_port()}", limit=32, timeout_s=0.5)
    _, report = run_device_edge(down, out=tmp_path / "down.json")  # what it offloads falls back
    assert report["answered_by_cloud"] == 0 and report["fallback_rate"] == report["offloaded"] / 32 > 0


def test_only_edge_with_the_onnx_engine_skips_jax():
    assert wants_device_edge(["edge", "--engine", "onnx", "--export", "x"])
    assert wants_device_edge(["edge", "--engine=onnx"])
    assert not wants_device_edge(["edge", "--engine", "jax"])
    assert not wants_device_edge(["serve", "--engine", "onnx"])
    assert not wants_device_edge(["edge", "--run", "r"])


def test_a_failed_verification_writes_nothing(pristine, tmp_path, monkeypatch):
    from ddnn_jax.interop import export_edge as module

    monkeypatch.setattr(module, "TOLERANCE", 0.0)  # no graph is that exact
    with pytest.raises(VerificationFailed, match="logits within"):
        export_edge(pristine, tmp_path / "never", ExportConfig())
    assert not (tmp_path / "never").exists() and not list(tmp_path.iterdir())
