"""The split made real on a small trained run: the cloud half served on 127.0.0.1, the edge half
against it. fp32 reproduces the in-process evaluation exactly; quantised wires cut the bytes; a
server that is down, silent, failing or killed costs fallbacks, never a sample. Byte counts are
checked against the HTTP request spelt out by hand and against the server's own counters."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable

import pytest
from http_fakes import SilentServer, post_bytes

from conftest import PRISTINE_EVAL
from ddnn_jax import cli
from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.guarantees import Guarantee
from ddnn_jax.deploy import wire
from ddnn_jax.deploy.cloud import BackgroundServer, CloudHalf, Route, cloud_app, make_app
from ddnn_jax.deploy.edge import EdgeConfig, run_edge
from ddnn_jax.deploy.sweep import sweep
from ddnn_jax.rundir import RunDir, read_edge_sweep, read_results
from ddnn_jax.stages.report import report

TARGET = 0.5  # the pristine run's router target
HEADER = 20  # bytes of the wire format's request header
Z = 14 * 14 * 32  # values in one sample's z (Fashion-MNIST)
PAYLOAD = {"fp32": 4 * Z, "fp16": 2 * Z, "int8": Z + 8 * 32}  # bytes per sample, as wire.py documents
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cloud(pristine):
    return CloudHalf.load(pristine, max_batch=64)  # compiled as requests come (test time)


@pytest.fixture(scope="module")
def server(cloud):
    with BackgroundServer(cloud_app(cloud)) as url:
        yield url


def _config(url, **changes):
    return dataclasses.replace(EdgeConfig(server=url, target=TARGET, batch=64), **changes)


def _served(url) -> tuple[int, int]:
    """The server's own counts so far: requests received and samples answered."""
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        health = json.loads(response.read())
    return health["requests"], health["samples"]


def _since(before: tuple[int, int], url) -> tuple[int, int]:
    """The server's requests and answered samples since ``before``."""
    now = _served(url)
    return now[0] - before[0], now[1] - before[1]


@pytest.mark.parametrize("mechanism", ["router", "entropy", "random", "oracle"])
def test_fp32_accuracy_equals_results_json(pristine, server, tmp_path, mechanism):
    before = _served(server)
    path, report = run_edge(pristine, _config(server, mechanism=mechanism), out=tmp_path / "r.json")
    requests, samples = _since(before, server)
    assert json.loads(path.read_text()) == report
    in_process = report["in_process"]
    assert report["samples"] == PRISTINE_EVAL and report["fallback_rate"] == 0.0
    assert report["accuracy"] == in_process["accuracy"] == in_process["results_json_accuracy"]
    assert report["local_rate"] == in_process["local_rate"]
    assert in_process["decisions_differing"] == 0 and in_process["predictions_differing"] == 0
    curve = read_results(RunDir(pristine))["curves"][in_process["curve"]]
    point = next(p for p in curve if p["target"] == TARGET)
    assert (report["accuracy"], report["local_rate"]) == (point["accuracy"], point["local_rate"])
    offloads = report["offloaded"]
    assert offloads == round((1 - point["local_rate"]) * PRISTINE_EVAL)  # as the evaluate stage counted
    bytes_ = report["bytes"]
    assert (bytes_["requests"], offloads, report["answered_by_cloud"]) == (requests, samples, samples)
    assert bytes_["payload_per_offload"] == PAYLOAD["fp32"]
    assert requests <= -(-PRISTINE_EVAL // 64)
    # each request: the HTTP head, our header and its samples; the head's Content-Length of 1 to
    # 64 fp32 samples (25108 to 1605652 bytes) has 4 to 6 digits more than that of an empty body
    fixed = requests * (post_bytes(server, 0) + HEADER) + offloads * PAYLOAD["fp32"]
    assert fixed + 4 * requests <= bytes_["uplink"] <= fixed + 6 * requests


@pytest.mark.parametrize("mechanism", ["router", "entropy"])
def test_a_guaranteed_threshold_is_the_one_results_json_scored(pristine, server, tmp_path, mechanism):
    guarantee = Guarantee(epsilon=0.01, delta=0.05)
    # results.json's guaranteed curves are the evaluate stage's guarantee: evaluate with this one
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    assert cli.main(["evaluate", "--run", str(run), "--epsilon", "0.01", "--delta", "0.05"]) == 0
    config = _config(server, mechanism=mechanism, guarantee=guarantee, limit=None)
    _, report = run_edge(run, config, out=tmp_path / "r.json")
    curve = read_results(RunDir(run))["curves"][report["in_process"]["curve"]]
    point = next(p for p in curve if p["target"] == TARGET)
    assert report["in_process"]["curve"].endswith("_guaranteed")
    assert report["threshold"] == point["threshold"] and report["accuracy"] == point["accuracy"]
    assert report["in_process"]["results_json_accuracy"] == point["accuracy"]
    assert report["guarantee"] == {
        "kind": "local-rate",
        "epsilon": 0.01,
        "delta": 0.05,
        "certified_bound": point["certified_bound"],
    }
    if mechanism == "entropy":  # a guarantee results.json did not score is compared with nothing
        other = dataclasses.replace(guarantee, kind="accuracy-drop", epsilon=0.05)
        _, report = run_edge(run, dataclasses.replace(config, guarantee=other), out=tmp_path / "o.json")
        assert report["in_process"]["curve"] == "entropy_guaranteed"
        assert report["in_process"]["results_json_accuracy"] is None  # not its 0.05 local-rate point


def test_batch_one_decides_alike_and_counts_headers(pristine, server, tmp_path):
    before = _served(server)
    _, report = run_edge(pristine, _config(server, batch=1, limit=300), out=tmp_path / "r.json")
    requests, samples = _since(before, server)
    assert report["in_process"]["accuracy"] == report["accuracy"]
    assert report["in_process"]["decisions_differing"] == 0
    bytes_ = report["bytes"]
    # one request per offloaded sample, as the server counted them
    assert bytes_["requests"] == report["offloaded"] == requests == samples > 0
    one_sample = post_bytes(server, HEADER + PAYLOAD["fp32"])  # the HTTP head spelt out by hand
    assert bytes_["uplink"] == requests * one_sample and bytes_["uplink_per_offload"] == one_sample
    for key in ("per_sample", "per_offload", "round_trip", "per_local_sample"):
        p = report["latency_ms"][key]
        assert p["p50"] <= p["p95"] <= p["p99"]


def test_quantised_wires_cut_the_bytes_and_report_their_accuracy_change(pristine, server, tmp_path):
    reports = {
        w: run_edge(
            pristine, _config(server, mechanism="entropy", wire=w, batch=1, limit=400), out=tmp_path / w
        )[1]
        for w in wire.wires_of(wire.FEATURES)
    }
    per_offload = {w: r["bytes"]["uplink_per_offload"] for w, r in reports.items()}
    assert per_offload == {w: post_bytes(server, HEADER + PAYLOAD[w]) for w in wire.wires_of(wire.FEATURES)}
    assert {r["offloaded"] for r in reports.values()} == {reports["fp32"]["offloaded"]}  # same decisions
    for r in reports.values():
        in_process = r["in_process"]
        assert in_process["decisions_differing"] == 0  # a wire changes answers, never decisions
        # a prediction that differs moves the accuracy by one sample in 400 at most; few differ
        assert abs(in_process["accuracy_change"]) * 400 <= in_process["predictions_differing"] + 1e-9
        assert in_process["predictions_differing"] <= 20
    assert reports["fp32"]["in_process"]["predictions_differing"] == 0
    assert reports["fp32"]["in_process"]["accuracy_change"] == 0.0


@pytest.mark.parametrize("labelled", [True, False])
def test_a_folder_of_images_runs_like_the_test_split(pristine, server, tmp_path, labelled):
    from PIL import Image

    from ddnn_jax.rundir import read_outputs, split_images

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
    fallbacks = report["fallbacks"]  # five requests fail, then the open circuit sends none
    assert fallbacks["unreachable"]["samples"] + fallbacks["circuit_open"]["samples"] == report["offloaded"]
    assert report["bytes"]["requests"] == 5 and report["bytes"]["uplink"] == 0
    assert report["server"] is None and report["bytes"]["downlink"] == 0
    local_only = run_edge(
        pristine, _config(url, mechanism="entropy", target=1.0, limit=500), out=tmp_path / "l"
    )[1]
    assert report["accuracy"] == local_only["accuracy"]  # each fallback is the local answer


def test_a_server_that_never_answers_costs_timeouts_not_samples(pristine, tmp_path, capsys):
    with SilentServer() as silent:
        config = _config(silent.url, mechanism="entropy", limit=640, timeout_s=0.2)
        _, report = run_edge(pristine, config, out=tmp_path / "r.json")
    assert "no answer from" in capsys.readouterr().err  # its /health timed out too
    timeouts, paused = report["fallbacks"]["timeout"], report["fallbacks"]["circuit_open"]
    assert report["samples"] == 640 and report["answered_by_cloud"] == 0
    assert (
        timeouts["reason"] == "no answer within 0.2 s"
        and "after 5 failed requests in a row" in paused["reason"]
    )
    # five requests time out, then the circuit breaker keeps the other batches' offloads local
    assert timeouts["samples"] + paused["samples"] == report["offloaded"] and paused["samples"] > 0
    assert report["fallback_rate"] == report["offloaded"] / 640 and report["circuit_opened"] == 1
    # what the edge counted is what reached the server: one request per batch until the breaker
    posts = [request for request in silent.received if request.startswith(b"POST /v1/cloud ")]
    assert report["bytes"]["requests"] == len(posts) == 5
    assert report["bytes"]["uplink"] == sum(map(len, posts)) and report["bytes"]["downlink"] == 0


def test_a_failing_server_costs_fallbacks_not_samples(pristine, cloud, tmp_path):
    batches = []

    def every_other(features):  # the first, third, fifth ... batch fails
        batches.append(len(features))
        if len(batches) % 2:
            raise RuntimeError("out of memory")
        return cloud.routes[wire.CLOUD_PATH].compute(features)

    info = {"feature_shape": list(cloud.feature_shape), "num_classes": 10, "max_batch": 64, **cloud.describe}
    routes = {wire.CLOUD_PATH: Route(wire.FEATURES, cloud.feature_shape, every_other)}
    with BackgroundServer(make_app(routes, info)) as url:
        _, report = run_edge(pristine, _config(url, mechanism="entropy", limit=640), out=tmp_path / "r.json")
    failed, answered = sum(batches[0::2]), sum(batches[1::2])
    fallbacks = report["fallbacks"]["server_error"]
    assert report["samples"] == 640 and report["bytes"]["requests"] == len(batches) == 10
    assert (fallbacks["samples"], report["answered_by_cloud"]) == (failed, answered)
    assert "HTTP 500: the cloud failed: RuntimeError: out of memory" in fallbacks["reason"]
    assert report["fallback_rate"] == failed / 640


def test_a_server_of_another_model_is_refused_before_any_sample(pristine, cloud, tmp_path):
    info = {"feature_shape": [14, 14, 16], "num_classes": 10, "max_batch": 64, **cloud.describe}
    shape = r"serves features of shape \[14, 14, 16\].*serve the same run"
    with BackgroundServer(make_app(cloud.routes, info)) as url, pytest.raises(UsageError, match=shape):
        run_edge(pristine, _config(url), out=tmp_path / "r.json")
    info = {**info, "feature_shape": [14, 14, 32], "checkpoint": "0" * 64}
    with (
        BackgroundServer(make_app(cloud.routes, info)) as url,
        pytest.raises(UsageError, match="other weights"),
    ):
        run_edge(pristine, _config(url), out=tmp_path / "r.json")
    features_only = {wire.CLOUD_PATH: cloud.routes[wire.CLOUD_PATH]}
    with (
        BackgroundServer(make_app(features_only, {**info, **cloud.describe})) as url,
        pytest.raises(UsageError, match="has no /v1/image route"),
    ):
        run_edge(pristine, _config(url, wire="jpeg"), out=tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_an_out_that_cannot_take_the_report_is_refused_before_any_request(pristine, tmp_path):
    """Checked before the stream: no server listens at the address, so an error about the
    server would mean the edge went that far first."""
    from conftest import free_port

    (tmp_path / "a-file").write_text("x")
    cases = {
        tmp_path: "is a directory: give the path of a file",
        tmp_path / "a-file" / "report.json": "a-file is a file, not a directory",
    }
    nowhere = _config(f"http://127.0.0.1:{free_port()}")
    for out, message in cases.items():
        with pytest.raises(UsageError, match=message):
            run_edge(pristine, nowhere, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_bad_flags_exit_2_with_one_line(pristine, server, capsys):
    cases = {
        ("--server", "localhost:80"): "is not an http://HOST:PORT address",
        ("--server", server, "--target", "0.7"): "calibrated for L0 in 0.5, not 0.7",
        ("--server", server, "--family", "nope"): "no router family 'nope'",
        ("--server", server, "--batch", "0"): "--batch must lie in 1..4096",
        ("--server", server, "--batch", "4097"): "--batch must lie in 1..4096",
        ("--server", server, "--timeout", "0"): "--timeout must lie in (0, 3600] seconds",
        ("--server", server, "--timeout", "inf"): "--timeout must lie in (0, 3600] seconds",
        ("--server", server, "--timeout", "nan"): "--timeout must lie in (0, 3600] seconds",
    }
    for flags, message in cases.items():
        assert cli.main(["edge", "--run", str(pristine), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_the_sweep_gives_accuracy_against_bytes_for_every_uplink(pristine, server, tmp_path, monkeypatch):
    from ddnn_jax.deploy import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "QUALITIES", (90, 50))  # two qualities of each lossy format
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    path = sweep(run, _config(server))
    result = read_edge_sweep(RunDir(run))
    assert path == RunDir(run).edge_sweep and result is not None
    points = {(p["mechanism"], p["target"], p["uplink"]): p for p in result["points"]}
    uplinks = [
        "fp32",
        "fp16",
        "int8",
        "raw",
        "png",
        *(f"{f} q{q}" for f in ("jpeg", "webp") for q in (90, 50)),
    ]
    assert set(result["request_bytes"]) == set(uplinks)
    assert set(points) == {(m, TARGET, u) for m in ("entropy", "router") for u in uplinks} | {
        ("cloud_only", None, u) for u in uplinks
    }
    results = read_results(RunDir(run))
    fixed = {**PAYLOAD, "raw": 28 * 28}
    one_sample = {w: post_bytes(server, HEADER + fixed[w]) for w in fixed}  # spelt out by hand
    assert {w: result["request_bytes"][w] for w in fixed} == one_sample
    for mechanism, curve in (("entropy", "entropy_calibrated"), ("router", "router_logits_calibrated")):
        expected = next(p for p in results["curves"][curve] if p["target"] == TARGET)
        offloads = round((1 - expected["local_rate"]) * PRISTINE_EVAL)  # as the evaluate stage counted
        for lossless in ("fp32", "raw", "png"):  # the same answers, whatever crosses
            assert points[mechanism, TARGET, lossless]["accuracy"] == expected["accuracy"]
        fp32 = points[mechanism, TARGET, "fp32"]
        assert fp32["bytes_per_sample"] == pytest.approx(offloads * one_sample["fp32"] / PRISTINE_EVAL)
    for u in uplinks:
        assert points["cloud_only", None, u]["bytes_per_sample"] == pytest.approx(result["request_bytes"][u])
    assert points["cloud_only", None, "fp32"]["accuracy"] == results["cloud_only_accuracy"]
    # a compressed image costs fewer bytes than the raw one, and a lower quality fewer still
    png, raw = result["request_bytes"]["png"], one_sample["raw"]
    assert result["request_bytes"]["jpeg q50"] < result["request_bytes"]["jpeg q90"] and png < raw

    _, live = run_edge(run, _config(server, batch=1, limit=200, wire="png"))  # into RUN_DIR/edge/
    assert live["in_process"]["predictions_differing"] == 0 and live["uplink"]["route"] == "/v1/image"
    text = report(run).read_text()
    assert "Every uplink at L0 = 0.5" in text and "Live runs of the edge" in text and "measured, png" in text
    assert "| png | " in text and "| jpeg q50 | " in text
    assert (run / "figures" / "fig_deployment_bytes.png").is_file()
    assert (run / "figures" / "fig_deployment_latency.png").is_file()
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
        health = json.loads(response.read())
    assert health["feature_shape"] == [14, 14, 32]
    assert health["run"] == pristine.name and str(pristine.parent) not in json.dumps(health)  # no path
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.startswith("ddnn serve: stopped after 0 requests") and "Traceback" not in err


@dataclasses.dataclass(frozen=True)
class _Then(Progress):
    """A Progress whose live bars call ``then()`` once, when ``images`` images have passed."""

    images: int = 0
    then: Callable[[], None] | None = None

    def bar(self, total, desc, unit="it", **kwargs):
        return _CountdownBar(self.images, self.then)


class _CountdownBar:
    def __init__(self, images, then):
        self.left, self.then = images, then

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, n):
        before, self.left = self.left, self.left - n
        if before > 0 >= self.left:
            self.then()


def test_killing_the_server_mid_run_leaves_the_edge_finishing_every_sample(pristine, tmp_path):
    process, url = _start_server(pristine)
    served = {}

    def kill():  # on the edge's thread, between two samples: no request is in flight
        served["requests"], served["samples"] = _served(url)
        process.kill()
        process.wait()

    config = _config(url, mechanism="entropy", batch=1, limit=600, timeout_s=10.0)
    _, report = run_edge(pristine, config, out=tmp_path / "r", progress=_Then(images=300, then=kill))
    assert process.returncode == -signal.SIGKILL
    assert report["samples"] == 600
    # what the server answered before it died is the cloud's; every later offload falls back,
    # the first five with a failed request, the rest at once behind the open circuit breaker
    fallbacks = report["fallbacks"]
    unreachable, paused = fallbacks["unreachable"]["samples"], fallbacks["circuit_open"]["samples"]
    assert report["answered_by_cloud"] == served["samples"] > 0 and unreachable == 5
    assert unreachable + paused == report["offloaded"] - served["samples"] > 0
    assert report["fallback_rate"] == (unreachable + paused) / 600 and report["circuit_opened"] == 1
    assert report["in_process"]["decisions_differing"] == 0


def test_sigterm_mid_stream_writes_the_report_of_the_images_done(pristine, server, tmp_path):
    from ddnn_jax.deploy.edge import EdgeInterrupted

    before = signal.getsignal(signal.SIGTERM)
    stop = lambda: os.kill(os.getpid(), signal.SIGTERM)  # as a supervisor would, between two batches
    config = _config(server, mechanism="entropy", limit=256)
    with pytest.raises(EdgeInterrupted) as stopped:
        run_edge(pristine, config, out=tmp_path / "r.json", progress=_Then(images=128, then=stop))
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the process's again
    report = json.loads((tmp_path / "r.json").read_text())
    assert report == stopped.value.report and report["interrupted"] == {"after": 128, "of": 256}
    assert report["samples"] == 128 and report["fallback_rate"] == 0.0
    in_process = report["in_process"]  # the same rule on the same 128 images, in process
    assert report["accuracy"] == in_process["accuracy"] and in_process["predictions_differing"] == 0
    assert report["offloaded"] == report["answered_by_cloud"] > 0
