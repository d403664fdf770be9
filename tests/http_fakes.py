"""Test doubles of the network: a server that accepts connections and never answers, and the size
of the HTTP request http.client writes to the cloud, spelt out by hand."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse


def post_bytes(url: str, body_bytes: int) -> int:
    """Bytes of one POST of ``body_bytes`` to the cloud at ``url`` as http.client writes it: the
    request line, its four headers, the blank line and the body."""
    head = (
        f"POST /v1/cloud HTTP/1.1\r\nHost: {urllib.parse.urlsplit(url).netloc}\r\n"
        "Accept-Encoding: identity\r\n"
        f"Content-Length: {body_bytes}\r\n"
        "Content-Type: application/x-ddnn-features\r\n\r\n"
    )
    return len(head) + body_bytes


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection, reads all it is sent and never
    answers: a client waiting for an answer can only time out. Leaving the ``with`` block sets
    ``release``, which lets go of the connections still held.

    ``received`` holds what each connection sent, in the order they closed; read it after the
    ``with`` block, once every connection has been let go.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name="silent-accept", daemon=True)

    def __enter__(self) -> SilentServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        socket.create_connection(self._listener.getsockname()).close()  # wakes accept()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            for connection in self._held:
                with contextlib.suppress(OSError):  # the client may have gone already
                    connection.shutdown(socket.SHUT_RDWR)  # wakes recv()
        for thread in self._threads:
            thread.join()
        for connection in self._held:
            connection.close()

    def _accept(self) -> None:
        while True:
            connection, _ = self._listener.accept()
            if self.release.is_set():
                connection.close()
                return
            with self._lock:
                self._held.append(connection)
            thread = threading.Thread(target=self._read, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read(self, connection: socket.socket) -> None:
        chunks = []
        try:
            while chunk := connection.recv(1 << 16):
                chunks.append(chunk)
        except OSError:
            pass
        with self._lock:
            self.received.append(b"".join(chunks))


class ScriptedServer:
    """A TCP server on 127.0.0.1 that reads each request (its head and its Content-Length body)
    and answers it with ``answer``, as given: ``trickle_s`` apart byte by byte where set, then
    closes the connection. For answers no real ``ddnn serve`` gives."""

    def __init__(self, answer: bytes, trickle_s: float | None = None) -> None:
        self.answer, self.trickle_s = answer, trickle_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="scripted", daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            received += connection.recv(1 << 16)
        head, body = received.split(b"\r\n\r\n", 1)
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        while len(body) < length:
            body += connection.recv(1 << 16)
        with contextlib.suppress(OSError):  # the client may have hung up: the script is done
            if self.trickle_s is None:
                connection.sendall(self.answer)
            for byte in self.answer if self.trickle_s is not None else b"":
                if self._stop.wait(self.trickle_s):
                    return
                connection.sendall(bytes([byte]))
