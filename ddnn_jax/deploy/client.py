"""The HTTP client of the cloud service (``ddnn serve``): keep-alive connections that count every
byte they send and receive, a deadline per request, answers read no further than the logits they
must hold, faults named instead of raised, and a circuit breaker that stops offloading to a
server that keeps failing."""

from __future__ import annotations

import contextlib
import hmac
import http.client
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.deploy import auth, wire

# why an offloaded sample kept its local answer: the request's fault, or no request at all while
# the circuit breaker is open
FAILURES = ("unreachable", "timeout", "server_error", "refused", "circuit_open")
REASON_BYTES = 4096  # of an error answer's body: its one line of reason, not whatever follows
MAX_HEALTH_BYTES = 1 << 20


def parse_server(url: str) -> urllib.parse.SplitResult:
    """The server's URL, checked: http(s)://host[:port]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--server '{url}' is not an http://HOST:PORT address: give the one 'ddnn serve' printed"
        )
    try:
        parts.port  # noqa: B018 (parses the port)
    except ValueError:
        raise UsageError(f"--server '{url}' has a bad port: give the one 'ddnn serve' printed") from None
    return parts


class _Counting:
    """Counts every byte http.client has handed to the socket: request line, headers and body,
    once sent (http.client connects inside ``send``, so bytes for a server that cannot be
    reached are never counted)."""

    sent = 0

    def send(self, data) -> None:
        super().send(data)  # type: ignore[misc]
        self.sent += len(data)


class _HTTP(_Counting, http.client.HTTPConnection):
    pass


class _HTTPS(_Counting, http.client.HTTPSConnection):
    pass


class Answer(NamedTuple):
    """One request's outcome: logits, or the failure (one of FAILURES) and its reason."""

    logits: np.ndarray | None
    failure: str | None
    reason: str
    bytes_up: int
    bytes_down: int
    seconds: float


class CloudClient:
    """A keep-alive HTTP client of ``ddnn serve`` that counts its bytes and never raises on
    network faults: a failed request closes the connection and the next one opens a new one."""

    def __init__(self, url: str, timeout_s: float, token: str | None = None, tls_ca: str | None = None):
        parts = parse_server(url)
        self._make = _HTTPS if parts.scheme == "https" else _HTTP
        self.url, self.host, self.port, self.timeout_s = url, str(parts.hostname), parts.port, timeout_s
        self._connection: _HTTP | _HTTPS | None = None
        self.token = token
        self._tls = ssl.create_default_context(cafile=tls_ca) if parts.scheme == "https" else None
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    def _open(self) -> _HTTP | _HTTPS:
        if self._connection is None:
            if self._make is _HTTPS:  # the server's certificate checked against --tls-ca (else the system's)
                self._connection = _HTTPS(self.host, self.port, timeout=self.timeout_s, context=self._tls)
            else:
                self._connection = _HTTP(self.host, self.port, timeout=self.timeout_s)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def health(self) -> dict[str, Any] | None:
        """The server's /health answer, or None when it does not give one.

        With a token, the server must prove it holds the same one (an HMAC of a fresh challenge):
        a server that refuses the token, or answers without that proof, is a UsageError, since
        its answers could not be trusted."""
        connection = self._open()
        challenge = secrets.token_hex(16)
        query = "" if self.token is None else f"?{auth.CHALLENGE_PARAM}={challenge}"
        status = 0
        try:
            connection.request("GET", wire.HEALTH_PATH + query, headers=self._headers)
            response = connection.getresponse()
            status, body = response.status, response.read(MAX_HEALTH_BYTES + 1)
            health = json.loads(body) if status == 200 and len(body) <= MAX_HEALTH_BYTES else None
        except (OSError, http.client.HTTPException, ValueError):
            health = None
        if status == 401:
            raise UsageError(f"{self.url} refuses this edge's token: give the token file 'ddnn serve' uses")
        if not isinstance(health, dict):  # not ddnn serve's answer: a list, a string, too long
            self.close()
            return None
        if self.token is not None and not hmac.compare_digest(
            str(health.get("proof", "")), auth.token_proof(self.token, challenge)
        ):
            raise UsageError(
                f"{self.url} cannot prove it holds this edge's token: it is not the server to trust"
            )
        return health

    def infer(self, body: bytes, n: int, classes: int, path: str = wire.CLOUD_PATH) -> Answer:
        """POSTs one encoded batch to ``path``; the cloud logits [n, classes] or why there are none.

        A kept-alive connection the server has closed meanwhile is reopened once (the request
        never reached it); every other fault is the answer. ``timeout_s`` bounds the whole
        request, connecting, sending and the answer together: a server that trickles its answer
        a byte at a time is cut off at the deadline. The answer is read no further than the
        logits it must hold."""
        started, sent = time.perf_counter(), 0
        deadline = started + self.timeout_s
        expected = wire.logits_bytes(n, classes)
        for attempt in (0, 1):
            reused = self._connection is not None
            connection = self._open()
            connection.sent = 0
            expired = lambda: False
            try:
                with _cut_off_at(deadline, connection) as expired:
                    headers = {"Content-Type": wire.CONTENT_TYPE, **self._headers}
                    connection.request("POST", path, body=body, headers=headers)
                    response = connection.getresponse()
                    announced = response.length if response.status == 200 else None
                    if response.status == 200 and announced != expected:
                        answer = b""  # never read: a chunked, endless or oversized answer
                    else:
                        answer = response.read(expected if response.status == 200 else REASON_BYTES)
                break
            except (OSError, http.client.HTTPException) as err:
                sent += connection.sent
                if expired() or isinstance(err, TimeoutError):
                    return self._failed("timeout", f"no answer within {self.timeout_s:g} s", sent, started)
                stale = isinstance(
                    err, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                )
                if not (stale and reused and not attempt):  # a kept-alive connection gone stale
                    return self._failed("unreachable", f"{type(err).__name__}: {err}", sent, started)
                self.close()
        sent += connection.sent
        if expired():  # cut off mid-answer: what was read of it is not the answer
            return self._failed("timeout", f"no answer within {self.timeout_s:g} s", sent, started)
        seconds = time.perf_counter() - started
        down = _response_bytes(response, answer)
        if response.status != 200:
            self.close()
            failure = "server_error" if response.status >= 500 else "refused"
            reason = f"HTTP {response.status}: {answer.decode('utf-8', 'replace').strip()}"
            return Answer(None, failure, reason, sent, down, seconds)
        if announced != expected:
            self.close()  # the rest of that answer is never read: the connection cannot be reused
            length = "no length (chunked)" if announced is None else f"{announced} bytes"
            reason = f"the answer announces {length}, {n} samples' logits take {expected}"
            return Answer(None, "server_error", reason, sent, down, seconds)
        try:
            logits = wire.decode_logits(answer, n, classes)
        except wire.WireError as err:
            return Answer(None, "server_error", str(err), sent, down, seconds)
        return Answer(logits, None, "", sent, down, seconds)

    def _failed(self, failure: str, reason: str, sent: int, started: float) -> Answer:
        self.close()
        return Answer(None, failure, reason, sent, 0, time.perf_counter() - started)


@contextlib.contextmanager
def _cut_off_at(deadline: float, connection: http.client.HTTPConnection):
    """Shuts the connection's socket down at ``deadline`` (time.perf_counter), which ends any
    read or write blocked on it; yields a function saying whether that happened."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    if connection.sock is None:  # connect first, within the deadline, so that there is a socket
        connection.timeout = max(1e-3, deadline - time.perf_counter())
        connection.connect()
    connection.sock.settimeout(max(1e-3, deadline - time.perf_counter()))  # no wait outlives it
    timer = threading.Timer(max(0.0, deadline - time.perf_counter()), expire)
    timer.daemon = True
    timer.start()
    try:
        yield fired.is_set
    finally:
        timer.cancel()


class CircuitBreaker:
    """After ``failures`` failed requests in a row, offloading stops for ``backoff_s`` seconds
    (the samples keep their local answers at once, no request made); then one request probes the
    server, and a success closes the circuit again. ``failures`` 0: never open."""

    def __init__(self, failures: int, backoff_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures, self.backoff_s, self._clock = failures, backoff_s, clock
        self.in_a_row = 0
        self.opened = 0  # times the circuit opened
        self._open_until: float | None = None

    def allows(self) -> bool:
        """Whether to send now: closed, or open long enough for one probe."""
        return self._open_until is None or self._clock() >= self._open_until

    def record(self, ok: bool) -> None:
        """A request's outcome."""
        if ok:
            self.in_a_row, self._open_until = 0, None
            return
        self.in_a_row += 1
        probe_failed = self._open_until is not None
        if self.failures and (probe_failed or self.in_a_row >= self.failures):
            self.opened += not probe_failed
            self._open_until = self._clock() + self.backoff_s


def _response_bytes(response: http.client.HTTPResponse, body: bytes) -> int:
    """Status line, headers and body as received (rebuilt from what http.client parsed)."""
    status_line = len(f"HTTP/1.1 {response.status} {response.reason}\r\n")
    headers = sum(len(name) + len(value) + 4 for name, value in response.getheaders())
    return status_line + headers + 2 + len(body)


def warn_unanswered(server: str, progress: Progress) -> None:
    """What an edge says when no server answers its health check: it goes on, falling back."""
    progress.warn(
        f"ddnn edge: no answer from {server}{wire.HEALTH_PATH}: samples offloaded while it is down fall back"
    )


def check_route(
    health: dict[str, Any], server: str, path: str, bottleneck: tuple[str, dict[str, Any]] | None
) -> None:
    """Refuses a server without the route ``path``, or serving another bottleneck of the name
    in ``bottleneck`` (name, what ``DeployedBottleneck.describe`` says) than the edge's."""
    found = health.get("routes")
    routes: dict[str, Any] = found if isinstance(found, dict) else {}
    if path not in routes:
        raise UsageError(f"{server} has no {path} route: serve a run of this ddnn-jax, with its bottleneck")
    if bottleneck is not None:
        name, described = bottleneck
        if (health.get("bottlenecks") or {}).get(name) != described:
            raise UsageError(
                f"{server} serves another bottleneck {name} than this edge's: serve the run it reads"
            )
