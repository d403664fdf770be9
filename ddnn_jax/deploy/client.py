"""The HTTP client of the cloud service (``ddnn serve``): keep-alive connections that count every
byte they send and receive, and answers that name a network fault instead of raising it."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from typing import Any, NamedTuple

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.deploy import wire

FAILURES = ("unreachable", "timeout", "server_error", "refused")


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

    def __init__(self, url: str, timeout_s: float):
        parts = parse_server(url)
        self._make = _HTTPS if parts.scheme == "https" else _HTTP
        self.host, self.port, self.timeout_s = str(parts.hostname), parts.port, timeout_s
        self._connection: _HTTP | _HTTPS | None = None

    def _open(self) -> _HTTP | _HTTPS:
        if self._connection is None:
            self._connection = self._make(self.host, self.port, timeout=self.timeout_s)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def health(self) -> dict[str, Any] | None:
        """The server's /health answer, or None when it does not give one."""
        connection = self._open()
        try:
            connection.request("GET", wire.HEALTH_PATH)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                self.close()
                return None
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def infer(self, body: bytes, n: int, classes: int, path: str = wire.CLOUD_PATH) -> Answer:
        """POSTs one encoded batch to ``path``; the cloud logits [n, classes] or why there are none.

        A kept-alive connection the server has closed meanwhile is reopened once (the request
        never reached it); every other fault is the answer. ``timeout_s`` bounds each wait on
        the socket."""
        started, sent = time.perf_counter(), 0
        for attempt in (0, 1):
            reused = self._connection is not None
            connection = self._open()
            connection.sent = 0
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": wire.CONTENT_TYPE})
                response = connection.getresponse()
                answer = response.read()
                break
            except TimeoutError:
                reason = f"no answer within {self.timeout_s:g} s"
                return self._failed("timeout", reason, sent + connection.sent, started)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
                sent += connection.sent
                if not reused or attempt:
                    return self._failed("unreachable", f"{type(err).__name__}: {err}", sent, started)
                self.close()
            except (OSError, http.client.HTTPException) as err:
                return self._failed(
                    "unreachable", f"{type(err).__name__}: {err}", sent + connection.sent, started
                )
        sent += connection.sent
        seconds = time.perf_counter() - started
        down = _response_bytes(response, answer)
        if response.status != 200:
            self.close()
            failure = "server_error" if response.status >= 500 else "refused"
            reason = f"HTTP {response.status}: {answer.decode('utf-8', 'replace').strip()}"
            return Answer(None, failure, reason, sent, down, seconds)
        try:
            logits = wire.decode_logits(answer, n, classes)
        except wire.WireError as err:
            return Answer(None, "server_error", str(err), sent, down, seconds)
        return Answer(logits, None, "", sent, down, seconds)

    def _failed(self, failure: str, reason: str, sent: int, started: float) -> Answer:
        self.close()
        return Answer(None, failure, reason, sent, 0, time.perf_counter() - started)


def _response_bytes(response: http.client.HTTPResponse, body: bytes) -> int:
    """Status line, headers and body as received (rebuilt from what http.client parsed)."""
    status_line = len(f"HTTP/1.1 {response.status} {response.reason}\r\n")
    headers = sum(len(name) + len(value) + 4 for name, value in response.getheaders())
    return status_line + headers + 2 + len(body)
