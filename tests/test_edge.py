"""The split made real on a small trained run: the cloud half served on 127.0.0.1, the edge half
against it. fp32 reproduces the in-process evaluation exactly; quantised wires cut the bytes; a
server that is down, slow, failing or killed costs fallbacks, never a sample."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from ddnn_jax.cli import main as cli
from ddnn_jax.cli import wire
from ddnn_jax.common.errors import UsageError
from ddnn_jax.deploy.cloud import BackgroundServer, CloudHalf, cloud_app, make_app
from ddnn_jax.deploy.edge import EdgeConfig, run_edge, sweep
from ddnn_jax.rundir.records import RunDir, read_edge_sweep, read_results
from ddnn_jax.stages.report import report

TARGET = 0.5  # the pristine run's router target
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cloud(pristine):
    half = CloudHalf.load(pristine, max_batch=64)
    half.warm_up()
    return half


@pytest.fixture(scope="module")
def server(cloud):
    with BackgroundServer(cloud_app(cloud)) as url:
        yield url


def _config(url, **changes):
    return dataclasses.replace(EdgeConfig(server=url, target=TARGET, batch=64), **changes)


@pytest.mark.parametrize("mechanism", ["router", "entropy", "random", "oracle"])
def test_fp32_accuracy_equals_results_json(pristine, server, tmp_path, mechanism):
    path, report = run_edge(pristine, _config(server, mechanism=mechanism), out=tmp_path / "r.json")
    assert json.loads(path.read_text()) == report
    in_process = report["in_process"]
    assert report["samples"] == 10000 and report["fallback_rate"] == 0.0
    assert report["accuracy"] == in_process["accuracy"] == in_process["results_json_accuracy"]
    assert report["local_rate"] == in_process["local_rate"]
    assert in_process["decisions_differing"] == 0 and in_process["predictions_differing"] == 0
    curve = read_results(RunDir(pristine))["curves"][in_process["curve"]]
    point = next(p for p in curve if p["target"] == TARGET)
    assert (report["accuracy"], report["local_rate"]) == (point["accuracy"], point["local_rate"])
    offloads = report["offloaded"]
    assert offloads == round((1 - report["local_rate"]) * 10000)
    bytes_ = report["bytes"]
    assert bytes_["payload_per_offload"] == wire.payload_bytes("fp32", (14, 14, 32))
    assert bytes_["requests"] <= -(-10000 // 64)
    per_request = (bytes_["uplink"] - offloads * bytes_["payload_per_offload"]) / bytes_["requests"]
    assert 20 + 60 < per_request < 20 + 400  # our header, the HTTP request line and headers


def test_batch_one_decides_alike_and_counts_headers(pristine, server, tmp_path):
    _, report = run_edge(pristine, _config(server, batch=1, limit=300), out=tmp_path / "r.json")
    assert report["in_process"]["accuracy"] == report["accuracy"]
    assert report["in_process"]["decisions_differing"] == 0
    bytes_ = report["bytes"]
    assert bytes_["requests"] == report["offloaded"] > 0  # one request per offloaded sample
    header = bytes_["uplink_per_offload"] - bytes_["payload_per_offload"] - wire.REQUEST_HEADER_BYTES
    assert 60 < header < 400  # the HTTP request line and headers
    for key in ("per_sample", "per_offload", "round_trip", "per_local_sample"):
        p = report["latency_ms"][key]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"]
    assert report["throughput_per_s"] > 0


def test_quantised_wires_cut_the_bytes_and_report_their_accuracy_change(pristine, server, tmp_path):
    reports = {
        w: run_edge(
            pristine, _config(server, mechanism="entropy", wire=w, batch=1, limit=400), out=tmp_path / w
        )[1]
        for w in wire.WIRES
    }
    per_offload = {w: r["bytes"]["uplink_per_offload"] for w, r in reports.items()}
    assert per_offload["int8"] <= 0.30 * per_offload["fp32"]
    assert per_offload["fp16"] < 0.51 * per_offload["fp32"]
    assert {r["offloaded"] for r in reports.values()} == {reports["fp32"]["offloaded"]}  # same decisions
    for r in reports.values():
        assert r["accuracy"] - r["in_process"]["accuracy"] == pytest.approx(
            r["in_process"]["accuracy_change"]
        )
        assert abs(r["in_process"]["accuracy_change"]) < 0.05
    assert reports["fp32"]["in_process"]["accuracy_change"] == 0.0


@pytest.mark.parametrize("labelled", [True, False])
def test_a_folder_of_images_runs_like_the_test_split(pristine, server, tmp_path, labelled):
    from PIL import Image

    from ddnn_jax.rundir.records import read_outputs
    from ddnn_jax.stages.route import split_images

    outputs = read_outputs(RunDir(pristine))
    images, labels = split_images(RunDir(pristine), outputs)["test"][:120], outputs["test"].labels[:120]
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        path = tmp_path / "images" / (str(label) if labelled else "") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., 0]).save(path)
    config = _config(server, images=str(tmp_path / "images"), batch=8)
    _, report = run_edge(pristine, config, out=tmp_path / "r.json")
    assert report["samples"] == 120 and report["images"] == str(tmp_path / "images")
    in_process = report["in_process"]
    assert in_process["decisions_differing"] == 0 and in_process["predictions_differing"] == 0
    assert in_process["results_json_accuracy"] is None
    if labelled:  # sorted by class folder, then name: the same images in another order
        on_split = run_edge(pristine, _config(server, limit=120), out=tmp_path / "s.json")[1]
        assert report["accuracy"] == in_process["accuracy"] == on_split["accuracy"]
    else:
        assert report["accuracy"] is None and in_process["accuracy"] is None
        with pytest.raises(UsageError, match="the oracle needs labels"):
            run_edge(pristine, dataclasses.replace(config, mechanism="oracle"), out=tmp_path / "o.json")


def test_a_server_down_leaves_every_sample_answered_locally(pristine, tmp_path, capsys):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _, report = run_edge(pristine, _config(url, mechanism="entropy", limit=500), out=tmp_path / "r.json")
    assert "no answer from" in capsys.readouterr().err
    assert report["fallback_rate"] == report["offloaded"] / 500 > 0
    assert report["fallbacks"]["unreachable"]["samples"] == report["offloaded"]
    assert report["server"] is None and report["bytes"]["downlink"] == 0
    local_only = run_edge(
        pristine, _config(url, mechanism="entropy", target=1.0, limit=500), out=tmp_path / "l"
    )[1]
    assert report["accuracy"] == local_only["accuracy"]  # each fallback is the local answer


@pytest.mark.parametrize(
    "behaviour, failure, reason",
    [("slow", "timeout", "no answer within 0.2 s"), ("fails", "server_error", "HTTP 500: the cloud failed")],
)
def test_a_slow_or_failing_server_costs_fallbacks_not_samples(
    pristine, cloud, tmp_path, behaviour, failure, reason
):
    calls = []

    def faulty(features):
        calls.append(len(features))
        if behaviour == "slow" and len(calls) == 1:
            time.sleep(0.5)  # the requests queued behind it wait too
        if behaviour == "fails" and len(calls) % 2:
            raise RuntimeError("out of memory")
        return cloud(features)

    info = {"feature_shape": list(cloud.feature_shape), "num_classes": 10, "max_batch": 64, **cloud.describe}
    with BackgroundServer(make_app(faulty, info)) as url:
        config = _config(url, mechanism="entropy", limit=640, timeout_s=0.2)
        _, report = run_edge(pristine, config, out=tmp_path / "r.json")
    assert report["samples"] == 640
    fallbacks = report["fallbacks"][failure]
    assert 0 < fallbacks["samples"] < report["offloaded"] and reason in fallbacks["reason"]
    assert report["fallback_rate"] == fallbacks["samples"] / 640


def test_a_server_of_another_model_is_refused_before_any_sample(pristine, cloud, tmp_path):
    info = {"feature_shape": [14, 14, 16], "num_classes": 10, "max_batch": 64, **cloud.describe}
    shape = r"serves features of shape \[14, 14, 16\].*serve the same run"
    with BackgroundServer(make_app(cloud, info)) as url, pytest.raises(UsageError, match=shape):
        run_edge(pristine, _config(url), out=tmp_path / "r.json")
    info = {**info, "feature_shape": [14, 14, 32], "checkpoint": "0" * 64}
    with BackgroundServer(make_app(cloud, info)) as url, pytest.raises(UsageError, match="other weights"):
        run_edge(pristine, _config(url), out=tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_bad_flags_exit_2_with_one_line(pristine, server, capsys):
    cases = {
        ("--server", "localhost:80"): "is not an http://HOST:PORT address",
        ("--server", server, "--target", "0.7"): "calibrated for L0 in 0.5, not 0.7",
        ("--server", server, "--family", "nope"): "no router family 'nope'",
        ("--server", server, "--batch", "0"): "--batch must be at least 1",
        ("--server", server, "--timeout", "0"): "--timeout must be positive",
    }
    for flags, message in cases.items():
        assert cli.main(["edge", "--run", str(pristine), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_the_sweep_gives_accuracy_against_bytes_for_every_wire(pristine, server, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    path = sweep(run, _config(server))
    result = read_edge_sweep(RunDir(run))
    assert path == RunDir(run).edge_sweep and result is not None
    points = {(p["mechanism"], p["target"], p["wire"]): p for p in result["points"]}
    assert set(points) == {
        (m, t, w) for m in ("entropy", "router") for t in (TARGET,) for w in wire.WIRES
    } | {("cloud_only", None, w) for w in wire.WIRES}
    results = read_results(RunDir(run))
    for mechanism, curve in (("entropy", "entropy_calibrated"), ("router", "router_logits_calibrated")):
        fp32 = points[mechanism, TARGET, "fp32"]
        expected = next(p for p in results["curves"][curve] if p["target"] == TARGET)
        assert fp32["accuracy"] == expected["accuracy"]
        assert fp32["bytes_per_sample"] == pytest.approx(
            (1 - fp32["local_rate"]) * result["request_bytes"]["fp32"]
        )
    assert result["request_bytes"]["int8"] <= 0.3 * result["request_bytes"]["fp32"]
    assert points["cloud_only", None, "fp32"]["accuracy"] == results["cloud_only_accuracy"]

    run_edge(run, _config(server, batch=1, limit=200))  # into RUN_DIR/edge/
    text = report(run).read_text()
    assert "One offload costs" in text and "Live runs of the edge" in text and "measured, fp32" in text
    assert (run / "figures" / "fig_split_bytes.png").is_file()
    assert (run / "figures" / "fig_split_latency.png").is_file()
    result["made_from"] = "0" * 64  # as if made from other outputs
    RunDir(run).edge_sweep.write_text(json.dumps(result))
    text = report(run).read_text()
    assert "1 file(s) under `edge/` were made from other outputs" in text and "No current sweep" in text


def _start_server(run, *extra):
    process = subprocess.Popen(
        [sys.executable, "-m", "ddnn_jax.cli", "serve", "--run", str(run), "--max-batch", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, process.stderr.read()
    return process, line.rsplit(" ", 1)[1].strip()


def test_serve_stops_cleanly_on_sigterm(pristine):
    process, url = _start_server(pristine)
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert json.loads(response.read())["feature_shape"] == [14, 14, 32]
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.startswith("ddnn serve: stopped after 0 requests") and "Traceback" not in err


def test_killing_the_server_mid_run_leaves_the_edge_finishing_every_sample(pristine, tmp_path):
    process, url = _start_server(pristine)
    done = {}
    config = _config(url, mechanism="entropy", batch=1, limit=3000, timeout_s=2.0)
    edge = threading.Thread(
        target=lambda: done.update(report=run_edge(pristine, config, out=tmp_path / "r")[1])
    )
    edge.start()
    while True:  # kill it once it has answered some offloads
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            if json.loads(response.read())["samples"] >= 50:
                break
        time.sleep(0.02)
    process.kill()
    process.wait()
    edge.join(timeout=120)
    report = done["report"]
    assert report["samples"] == 3000
    unreachable = report["fallbacks"]["unreachable"]["samples"]
    assert 0 < unreachable < report["offloaded"]
    assert report["fallback_rate"] == unreachable / 3000
    assert report["answered_by_cloud"] == report["offloaded"] - unreachable >= 50
    assert np.isclose(report["local_rate"], report["in_process"]["local_rate"])
