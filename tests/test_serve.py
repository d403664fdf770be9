"""The cloud service on 127.0.0.1: answers, and a one-line 4xx for every bad request after which
it goes on serving. The HTTP layer is tested around a small cloud function passed in (the real
cloud half is tested in test_edge.py)."""

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from aiohttp import web
from http_fakes import ScriptedServer, SilentServer, post_bytes

from ddnn_jax.deploy import auth, wire
from ddnn_jax.deploy import cloud as cloud_module
from ddnn_jax.deploy.client import CloudClient
from ddnn_jax.deploy.cloud import BackgroundServer, CloudHalf, Route, batch_sizes, make_app

SHAPE = (4, 4, 3)
CLASSES = 5
MAX_BATCH = 8


def cloud(features: np.ndarray) -> np.ndarray:
    """A deterministic stand-in head: channel means, tiled to CLASSES logits."""
    means = features.mean(axis=(1, 2))
    return np.concatenate([means, means], axis=-1)[:, :CLASSES].astype(np.float32)


INFO = {"feature_shape": list(SHAPE), "num_classes": CLASSES, "max_batch": MAX_BATCH, "run": "test"}


def _routes(compute):
    """The features route alone, around ``compute``."""
    return {wire.CLOUD_PATH: Route(wire.FEATURES, SHAPE, compute)}


@pytest.fixture
def server():
    with BackgroundServer(make_app(_routes(cloud), INFO)) as url:
        yield url


def _post(url, body, content_type=wire.CONTENT_TYPE, path=wire.CLOUD_PATH):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _features(n=2, shape=SHAPE):
    return np.random.default_rng(n).normal(size=(n, *shape)).astype(np.float32)


def _answers(url):
    z = _features()
    status, body = _post(url, wire.encode(z, "fp32"))
    assert status == 200
    np.testing.assert_array_equal(wire.decode_logits(body, 2, CLASSES), cloud(z))


def test_health_says_what_is_served(server):
    parts = urllib.parse.urlsplit(server)
    assert parts.hostname == "127.0.0.1" and parts.port > 0
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", "/health")
    health = json.loads(connection.getresponse().read())
    assert health["status"] == "ok" and health["feature_shape"] == list(SHAPE)
    assert health["wires"] == ["fp32", "fp16", "int8"] and health["max_batch"] == MAX_BATCH
    assert health["requests"] == 0


@pytest.mark.parametrize("wire_name", wire.wires_of(wire.FEATURES))
def test_every_wire_is_answered(server, wire_name):
    z = _features(n=3)
    status, body = _post(server, wire.encode(z, wire_name))
    assert status == 200
    expected = cloud(wire.decode(wire.encode(z, wire_name), SHAPE).values)
    np.testing.assert_array_equal(wire.decode_logits(body, 3, CLASSES), expected)


@pytest.mark.parametrize(
    "body, content_type, status, reason",
    [
        (b"not features", wire.CONTENT_TYPE, 400, "truncated header"),
        (wire.encode(_features(), "fp32")[:-7], wire.CONTENT_TYPE, 400, "truncated body"),
        (wire.encode(_features(shape=(4, 4, 2)), "fp32"), wire.CONTENT_TYPE, 422, "features of shape"),
        (wire.encode(_features(), "fp32"), "application/json", 415, "send Content-Type"),
        (bytes(20 + (MAX_BATCH + 1) * 4 * 4 * 3 * 4), wire.CONTENT_TYPE, 413, "request body over"),
        (wire.encode(_features(n=MAX_BATCH + 1), "fp16"), wire.CONTENT_TYPE, 413, "9 samples"),
    ],
)
def test_a_bad_request_gets_one_line_and_the_next_is_served(server, body, content_type, status, reason):
    got, text = _post(server, body, content_type)
    assert got == status
    line = text.decode()
    assert reason in line and line.count("\n") == 1
    _answers(server)


def test_a_dropped_connection_mid_body_and_garbage_leave_the_server_serving(server, caplog):
    parts = urllib.parse.urlsplit(server)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/cloud HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ddnn-features\r\n"
            b"Content-Length: 500\r\n\r\n" + bytes(100)
        )  # then hang up, 400 bytes short
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        raw.sendall(b"\x00\x01garbage that is no HTTP\r\n\r\n")
        assert raw.recv(100).split(b" ")[1] == b"400"
    _answers(server)
    # the hang-up is counted and is one line in the log, not aiohttp's traceback
    for _ in range(200):  # the server sees the hang-up on its own loop: wait until it has
        if CloudClient(server, timeout_s=10).health()["dropped"] == 1:
            break
        time.sleep(0.05)
    (dropped,) = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert dropped.getMessage().count("\n") == 0 and dropped.exc_info is None
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= 40]


def test_a_failing_cloud_answers_500_and_the_next_batch_is_served():
    calls = []

    def flaky(features):
        calls.append(len(features))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return cloud(features)

    with BackgroundServer(make_app(_routes(flaky), INFO)) as url:
        status, text = _post(url, wire.encode(_features(), "fp32"))
        assert status == 500 and text.decode() == "the cloud failed: RuntimeError: device lost\n"
        _answers(url)


def test_non_finite_logits_are_a_500_and_the_edge_client_falls_back():
    """Finite features can overflow a head (z near 3e38): the server refuses to pass on what it
    computed, and the client takes such an answer, if it came, for a server fault."""

    def overflowing(features):
        logits = cloud(features)
        logits[0, 1] = np.nan
        return logits

    with BackgroundServer(make_app(_routes(overflowing), INFO)) as url:
        status, text = _post(url, wire.encode(_features(), "fp32"))
        assert status == 500 and text.decode() == "the cloud computed non-finite logits for 1 of 2 samples\n"
        answer = CloudClient(url, timeout_s=10).infer(wire.encode(_features(), "fp32"), 2, CLASSES)
        assert answer.logits is None and answer.failure == "server_error" and "HTTP 500" in answer.reason
        health = CloudClient(url, timeout_s=10).health()
        assert health is not None and (health["failed"], health["samples"]) == (2, 0)

    async def nan_answer(request):  # a server that does send them
        await request.read()
        nan = wire.encode_logits(np.full((2, CLASSES), np.nan, np.float32))
        return web.Response(body=nan, content_type=wire.LOGITS_CONTENT_TYPE)

    other = web.Application()
    other.router.add_post(wire.CLOUD_PATH, nan_answer)
    with BackgroundServer(other) as url:
        answer = CloudClient(url, timeout_s=10).infer(wire.encode(_features(), "fp32"), 2, CLASSES)
        assert answer.logits is None and answer.failure == "server_error"
        assert answer.reason == "the answer holds non-finite logits for 2 of 2 samples"


def test_health_answers_while_a_batch_computes():
    computing, release = threading.Event(), threading.Event()

    def held(features):  # computes until the test lets it go
        computing.set()
        release.wait()
        return cloud(features)

    with BackgroundServer(make_app(_routes(held), INFO)) as url:
        parts = urllib.parse.urlsplit(url)
        busy = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        busy.request(
            "POST",
            "/v1/cloud",
            body=wire.encode(_features(), "fp32"),
            headers={"Content-Type": wire.CONTENT_TYPE},
        )
        try:
            assert computing.wait(10), "the batch never reached the cloud"
            probe = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            probe.request("GET", "/health")
            response = probe.getresponse()
            health = json.loads(response.read())
            # answered while the batch could not have finished: it is counted, not yet answered
            assert response.status == 200 and (health["requests"], health["samples"]) == (1, 0)
        finally:
            release.set()
        assert busy.getresponse().status == 200


def test_batch_sizes_cover_every_request_size():
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    for n in range(1, 101):
        assert any(size >= n for size in batch_sizes(100))


def test_a_taken_port_is_refused_in_one_line(server):
    from ddnn_jax.common.errors import UsageError

    port = urllib.parse.urlsplit(server).port
    with (
        pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"),
        BackgroundServer(make_app(_routes(cloud), INFO), port=port),
    ):
        pass


def test_the_edge_client_reopens_a_kept_alive_connection_the_server_closed():
    body = wire.encode(_features(), "fp32")
    with BackgroundServer(make_app(_routes(cloud), INFO)) as url:
        client = CloudClient(url, timeout_s=5.0)
        first = client.infer(body, 2, CLASSES)
        assert first.failure is None and first.bytes_up > len(body)
    down = client.infer(body, 2, CLASSES)  # nothing listens: a fault, not an exception
    assert down.failure == "unreachable" and down.logits is None and down.bytes_down == 0
    with BackgroundServer(make_app(_routes(cloud), INFO), port=urllib.parse.urlsplit(url).port):
        assert client.infer(body, 2, CLASSES).failure is None
        kept = client._connection
        assert client.infer(body, 2, CLASSES).failure is None and client._connection is kept  # kept alive
    with BackgroundServer(make_app(_routes(cloud), INFO), port=urllib.parse.urlsplit(url).port):
        again = client.infer(body, 2, CLASSES)  # its kept-alive connection died with the last server
    assert again.failure is None and again.bytes_up >= first.bytes_up
    np.testing.assert_array_equal(again.logits, first.logits)


def test_a_server_that_never_answers_is_a_timeout_that_counts_what_was_sent():
    body = wire.encode(_features(), "fp32")
    with SilentServer() as silent:
        client = CloudClient(silent.url, timeout_s=0.2)
        assert client.health() is None  # no answer: no health, and no exception
        answer = client.infer(body, 2, CLASSES)
        client.close()
    assert answer.failure == "timeout" and answer.reason == "no answer within 0.2 s"
    assert answer.logits is None and answer.bytes_down == 0
    health, post = sorted(silent.received)  # b"GET ..." sorts before b"POST ..."
    assert health.startswith(b"GET /health HTTP/1.1\r\n")
    # every byte the client counted reached the server, and is the request as written by hand
    assert answer.bytes_up == len(post) == post_bytes(silent.url, len(body)) and post.endswith(body)


def test_bytes_for_a_server_that_cannot_be_reached_are_not_counted():
    from conftest import free_port

    client = CloudClient(f"http://127.0.0.1:{free_port()}", timeout_s=10)
    answer = client.infer(wire.encode(_features(), "fp32"), 2, CLASSES)
    assert answer.failure == "unreachable" and "ConnectionRefusedError" in answer.reason
    assert (answer.bytes_up, answer.bytes_down) == (0, 0)


@pytest.mark.parametrize("max_batch", [0, cloud_module.MAX_BATCH + 1])
def test_a_max_batch_outside_its_bounds_is_refused_before_anything_loads(tmp_path, max_batch):
    from ddnn_jax.common.errors import UsageError

    bound = cloud_module.MAX_BATCH
    with pytest.raises(UsageError, match=rf"--max-batch must lie in 1\.\.{bound}, got {max_batch}"):
        CloudHalf.load(tmp_path / "no-run", max_batch)


def _status_of(url: str, request: bytes) -> bytes:
    """The status code a raw request gets (the socket waits 10 s at most)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        raw.sendall(request)
        return raw.recv(100).split(b" ")[1]


def test_a_declared_body_too_large_or_too_slow_is_answered_and_let_go():
    """A body over the limit is refused on its headers alone; one that does not arrive is a
    408 after the body timeout, not a connection held open until shutdown."""
    headers = "POST /v1/cloud HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ddnn-features\r\n"
    with BackgroundServer(make_app(_routes(cloud), INFO, body_timeout_s=0.5)) as url:
        huge = f"{headers}Content-Length: 1000000000\r\n\r\n".encode()
        assert _status_of(url, huge) == b"413"
        assert _status_of(url, f"{headers}Content-Length: 500\r\n\r\n".encode() + bytes(10)) == b"408"
        _answers(url)
        health = CloudClient(url, timeout_s=10).health()
        assert health is not None and health["refused"] == 2


def test_the_image_route_answers_every_image_wire_and_refuses_wrong_images():
    from ddnn_jax.deploy import image_wire

    shape = (6, 5, 1)
    brightness = lambda images: np.repeat(images.mean(axis=(1, 2, 3))[:, None], CLASSES, 1).astype(np.float32)
    routes = {**_routes(cloud), wire.IMAGE_PATH: Route(wire.IMAGES, shape, brightness)}
    images = np.random.default_rng(0).integers(0, 256, (3, *shape)).astype(np.uint8)
    wrong_size = image_wire.encode_image(images[0, :5], "png", 0)
    with BackgroundServer(make_app(routes, INFO)) as url:
        for name in wire.wires_of(wire.IMAGES):
            body = wire.encode(images, name, 80)
            status, answer = _post(url, body, path=wire.IMAGE_PATH)
            assert status == 200, answer
            sent = wire.decode(body, shape, wire.IMAGES).values  # a lossy format's pixels, as decoded
            np.testing.assert_array_equal(wire.decode_logits(answer, 3, CLASSES), brightness(sent))
        refused = {
            wire.encode(images[:, :5], "png"): (422, "images of shape 5x5x1 do not match"),
            wire.encode(images, "raw")[:-1]: (400, "truncated body"),
            wire.encode(images[:1], "png")[:20] + wire.frame([wrong_size]): (400, "a 5x5 L image"),
            wire.encode(images[:1], "jpeg")[:20] + wire.encode(images[:1], "png")[20:]: (400, "not a JPEG"),
            wire.encode(images.astype(np.float32), "fp32"): (422, "not served on this route"),
        }
        for body, (status, reason) in refused.items():
            got, text = _post(url, body, path=wire.IMAGE_PATH)
            assert (got, reason in text.decode()) == (status, True), text
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            health = json.loads(response.read())
        assert health["routes"][wire.IMAGE_PATH] == {
            "kind": "images",
            "shape": list(shape),
            "wires": ["raw", "png", "jpeg", "webp"],
        }
        assert health["refused"] == len(refused)


def _logits_answer(n=2, head=None):
    body = wire.encode_logits(np.zeros((n, CLASSES), np.float32))
    head = head or f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_a_request_has_a_deadline_even_when_every_byte_arrives_in_time():
    # 52 bytes of logits and their head, one every 0.05 s: each read is quick, the whole is not
    with ScriptedServer(_logits_answer(), trickle_s=0.05) as trickling:
        answer = CloudClient(trickling.url, timeout_s=1.0).infer(wire.encode(_features(), "fp32"), 2, CLASSES)
    assert (answer.failure, answer.reason) == ("timeout", "no answer within 1 s"), answer.reason
    with ScriptedServer(_logits_answer()) as prompt:  # the same answer at once is taken
        answer = CloudClient(prompt.url, timeout_s=1.0).infer(wire.encode(_features(), "fp32"), 2, CLASSES)
    assert answer.failure is None and answer.logits.shape == (2, CLASSES)


@pytest.mark.parametrize(
    "head, reason",
    [
        ("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", "announces 1000000000 bytes"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "announces no length (chunked)"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", "announces 12 bytes, 2 samples' logits take 52"),
    ],
)
def test_an_answer_of_another_size_is_a_server_fault_never_read(head, reason):
    endless = b"x" * (1 << 20)  # what follows the head is never read
    with ScriptedServer(head.encode() + endless) as server:
        answer = CloudClient(server.url, timeout_s=5).infer(wire.encode(_features(), "fp32"), 2, CLASSES)
    assert answer.failure == "server_error" and reason in answer.reason
    assert answer.bytes_down < 200  # the head alone


@pytest.mark.parametrize("body", [b"[1, 2]", b'"ok"', b"{" * 10, b"x" * (2 << 20)])
def test_a_health_answer_that_is_not_a_json_object_is_no_answer(body):
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with ScriptedServer(head + body) as server:
        assert CloudClient(server.url, timeout_s=5).health() is None


def test_the_circuit_breaker_opens_after_failures_in_a_row_and_probes_after_its_backoff():
    from ddnn_jax.deploy.client import CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(3, backoff_s=10.0, clock=lambda: now[0])
    for ok in (False, False, True, False, False):  # a success resets the count
        assert breaker.allows()
        breaker.record(ok)
    breaker.record(False)  # the third in a row
    assert not breaker.allows() and breaker.opened == 1
    now[0] = 9.9
    assert not breaker.allows()
    now[0] = 10.0  # one probe; it fails: open again, at once, for another back-off
    assert breaker.allows()
    breaker.record(False)
    assert not breaker.allows() and breaker.opened == 1
    now[0] = 20.0
    breaker.record(True)  # the next probe succeeds: closed
    assert breaker.allows() and breaker.in_a_row == 0
    never = CircuitBreaker(0, backoff_s=10.0, clock=lambda: now[0])
    for _ in range(100):
        never.record(False)
    assert never.allows() and never.opened == 0


def test_a_token_guards_every_route_and_the_server_proves_it_holds_it(tmp_path):
    from ddnn_jax.common.errors import UsageError
    from ddnn_jax.deploy.auth import new_token

    token = new_token(tmp_path / "token")
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600 and auth.read_token(
        tmp_path / "token"
    ) == token
    with pytest.raises(UsageError, match="exists: reuse it with --token-file"):
        new_token(tmp_path / "token")
    body = wire.encode(_features(), "fp32")
    with BackgroundServer(make_app(_routes(cloud), INFO, token=token)) as url:
        status, text = _post(url, body)  # no token: nothing computed, nothing disclosed
        assert status == 401 and b"Authorization: Bearer" in text
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:  # up, and no more
            assert json.loads(response.read()) == {"status": "ok"}
        client = CloudClient(url, timeout_s=10, token=token)
        health = client.health()
        assert health is not None and health["requests"] == 0  # the refused POST never reached it
        answer = client.infer(body, 2, CLASSES)
        assert answer.failure is None and answer.logits is not None
        with pytest.raises(UsageError, match="cannot prove it holds this edge's token"):
            CloudClient(url, timeout_s=10, token="another-token-of-ours").health()
    with (
        BackgroundServer(make_app(_routes(cloud), INFO)) as url,
        pytest.raises(UsageError, match="cannot prove"),
    ):
        CloudClient(url, timeout_s=10, token=token).health()  # a server without it is not trusted


def test_listening_beyond_this_machine_needs_a_token_or_no_auth(tmp_path):
    from ddnn_jax.common.errors import UsageError
    from ddnn_jax.deploy.auth import check_exposure

    for host in ("0.0.0.0", "", "192.0.2.7"):
        with pytest.raises(UsageError, match="--no-auth to let anyone in"):
            check_exposure(host, None, no_auth=False)
        assert check_exposure(host, "a-token-of-sixteen", no_auth=False) is None
        assert "warning: --no-auth on" in check_exposure(host, None, no_auth=True)
    assert check_exposure("127.0.0.1", None, no_auth=False) is None
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(UsageError, match="holds no token of 16 or more"):
        auth.read_token(tmp_path / "short")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="makes its certificate with the openssl command")
def test_tls_serves_https_to_an_edge_that_trusts_the_certificate_only(tmp_path):
    from ddnn_jax.common.errors import UsageError
    from ddnn_jax.deploy.auth import tls_context

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with BackgroundServer(make_app(_routes(cloud), INFO), tls=tls_context(cert, key)) as url:
        assert url.startswith("https://127.0.0.1:")
        client = CloudClient(url, timeout_s=10, tls_ca=str(cert))
        assert client.health() is not None
        answer = client.infer(wire.encode(_features(), "fp32"), 2, CLASSES)
        assert answer.failure is None and answer.logits is not None
        assert CloudClient(url, timeout_s=10).health() is None  # an unknown certificate: no answer
    with pytest.raises(UsageError, match="cannot load --tls-cert"):
        tls_context(key, cert)  # the two the wrong way round
