"""The cloud half as a network service: edge features in, cloud logits out (``ddnn serve``).

Built on aiohttp: one well-kept package that gives an asyncio HTTP/1.1 server with a request
body limit (413) and graceful shutdown; the service needs nothing an ASGI framework would add,
and plain HTTP keeps the bytes on the wire easy to count and to inspect with curl. grpcio was
the other candidate; it would add generated stubs and HTTP/2 framing between us and the byte
counts the edge reports.

Endpoints:

* ``GET /health``: JSON describing what is served (run, checkpoint digest, feature shape,
  classes, wires, batch limit) and the requests answered so far.
* ``POST /v1/cloud``: a ``wire`` request body (``Content-Type: application/x-ddnn-features``)
  answered with the cloud logits. A body that does not follow the format gets 400, a feature
  shape or wire the cloud cannot use 422, a body over the limit 413, another content type 415;
  each with one line of reason, and the server goes on serving.

The cloud head runs through one jitted function on batches padded to the next power of two (at
most ``max_batch``), every size compiled before the address is printed, so no request waits for
XLA. Computation runs on one worker thread, so ``/health`` answers while a batch computes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from aiohttp import web

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.models import feature_shape
from ddnn_jax.core.training import build_model
from ddnn_jax.deploy import wire
from ddnn_jax.rundir import RunDir, as_run, read_run_record, restore_best
from ddnn_jax.rundir.checkpoints import state_digest

LOG = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 256
# How long a request's body may take to arrive once its headers have: a client that declares a
# body and then trickles or sends nothing is answered 408 and let go, not held until shutdown.
BODY_TIMEOUT_S = 30.0
# Each power of two up to --max-batch is compiled before serving, and a request may be that many
# fp32 samples: the bound keeps both to 13 programs and about 100 MB for Fashion-MNIST's z.
MAX_BATCH = 4096


def batch_sizes(max_batch: int) -> list[int]:
    """The padded batch sizes the cloud compiles: powers of two below ``max_batch``, and it."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return [*sizes, max_batch]


@dataclasses.dataclass
class CloudHalf:
    """The cloud head of a trained run, its own variables only, as features -> logits."""

    describe: dict[str, Any]  # what /health reports about the model
    feature_shape: tuple[int, int, int]
    num_classes: int
    max_batch: int
    _apply: Callable
    _variables: Any

    @classmethod
    def load(cls, run_dir: RunDir | Path, max_batch: int = DEFAULT_MAX_BATCH) -> CloudHalf:
        """Restores the run's best checkpoint and keeps the cloud's variables of it."""
        if not 1 <= max_batch <= MAX_BATCH:
            raise UsageError(f"--max-batch must lie in 1..{MAX_BATCH}, got {max_batch}")
        run = as_run(run_dir)
        read_run_record(run)
        record, state, epoch = restore_best(run)
        model = build_model(record.train, record.num_classes)
        variables = {"params": {"cloud": state.params["cloud"]}}
        if "cloud" in state.batch_stats:
            variables["batch_stats"] = {"cloud": state.batch_stats["cloud"]}
        shape = feature_shape(model, record.image_shape)
        describe = {
            "run": run.root.name,  # its name only: /health tells any client, not the disk's layout
            "dataset": record.dataset,
            "epoch": epoch,
            "checkpoint": state_digest(state),  # the edge checks it is the same model
        }
        apply = jax.jit(lambda v, z: model.apply(v, z, method=model.cloud_head))
        return cls(describe, shape, record.num_classes, max_batch, apply, variables)

    def warm_up(self) -> None:
        """Compiles every padded batch size."""
        for size in batch_sizes(self.max_batch):
            jax.block_until_ready(
                self._apply(self._variables, np.zeros((size, *self.feature_shape), np.float32))
            )

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Cloud logits [n, classes] of float32 features [n, h, w, c], n <= max_batch."""
        n = len(features)
        size = next(s for s in batch_sizes(self.max_batch) if s >= n)
        padded = np.zeros((size, *self.feature_shape), np.float32)
        padded[:n] = features
        return np.asarray(self._apply(self._variables, padded))[:n]


@dataclasses.dataclass
class _Counters:
    requests: int = 0
    samples: int = 0
    refused: int = 0
    failed: int = 0
    dropped: int = 0  # clients that hung up before their body had arrived


def _refuse(status: int, reason: str, *, close: bool = False) -> web.Response:
    """An error answer: the status and one line of reason; ``close``: then the connection ends
    (the body was not read, so the connection holds no next request)."""
    response = web.Response(status=status, text=reason + "\n", content_type="text/plain")
    if close:
        response.force_close()
    return response


COUNTERS = web.AppKey("counters", _Counters)


def make_app(
    cloud: Callable[[np.ndarray], np.ndarray], info: dict[str, Any], body_timeout_s: float = BODY_TIMEOUT_S
) -> web.Application:
    """The service around ``cloud`` (a CloudHalf, or anything with its call and ``info``'s keys).

    Args:
      cloud: float32 features [n, h, w, c] -> logits [n, classes]; run on one worker thread.
      info: ``feature_shape``, ``num_classes``, ``max_batch`` and whatever /health should add.
      body_timeout_s: how long a request's body may take to arrive.
    """
    shape = tuple(info["feature_shape"])
    limit = wire.REQUEST_HEADER_BYTES + info["max_batch"] * wire.payload_bytes("fp32", shape)
    too_large = f"request body over {limit} bytes ({info['max_batch']} fp32 samples): send smaller batches"
    app = web.Application(client_max_size=limit)
    counters = _Counters()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud")

    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", **info, "wires": list(wire.WIRES), **dataclasses.asdict(counters)}
        )

    async def infer(request: web.Request) -> web.Response:
        counters.requests += 1
        if request.content_type != wire.CONTENT_TYPE:
            counters.refused += 1
            return _refuse(415, f"send Content-Type {wire.CONTENT_TYPE}")
        if (request.content_length or 0) > limit:  # refused on its headers, before any byte of it
            counters.refused += 1
            return _refuse(413, too_large, close=True)
        try:
            body = await asyncio.wait_for(request.read(), body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            counters.refused += 1
            return _refuse(413, too_large, close=True)
        except TimeoutError:
            counters.refused += 1
            return _refuse(408, f"the request body did not arrive within {body_timeout_s:g} s", close=True)
        except ConnectionResetError as err:  # one line, where aiohttp would log a traceback
            counters.dropped += 1
            LOG.warning("ddnn serve: a client hung up mid-request (%s: %s)", type(err).__name__, err)
            return _refuse(400, "the connection was lost mid-body", close=True)
        try:
            batch = wire.decode_features(body, shape)
        except wire.WireRefused as err:
            counters.refused += 1
            return _refuse(422, str(err))
        except wire.WireError as err:
            counters.refused += 1
            return _refuse(400, str(err))
        n = len(batch.features)
        if n > info["max_batch"]:
            counters.refused += 1
            return _refuse(413, f"{n} samples in one request, this server takes {info['max_batch']}")
        try:
            logits = await asyncio.get_running_loop().run_in_executor(worker, cloud, batch.features)
        except Exception as err:  # the cloud failed on this batch; the next one may be fine
            counters.failed += 1
            return _refuse(500, f"the cloud failed: {type(err).__name__}: {err}")
        bad = wire.non_finite_rows(logits)
        if bad:  # never an answer the edge would take for a prediction
            counters.failed += 1
            return _refuse(500, f"the cloud computed non-finite logits for {bad} of {n} samples")
        counters.samples += n
        return web.Response(body=wire.encode_logits(logits), content_type=wire.LOGITS_CONTENT_TYPE)

    async def stop_worker(app: web.Application) -> None:
        worker.shutdown(wait=True)

    app.router.add_get(wire.HEALTH_PATH, health)
    app.router.add_post(wire.CLOUD_PATH, infer)
    app.on_cleanup.append(stop_worker)
    app[COUNTERS] = counters
    return app


def cloud_app(cloud: CloudHalf) -> web.Application:
    """The service of a loaded cloud half."""
    info = {
        **cloud.describe,
        "feature_shape": list(cloud.feature_shape),
        "num_classes": cloud.num_classes,
        "max_batch": cloud.max_batch,
    }
    return make_app(cloud, info)


async def _serve(app: web.Application, host: str, port: int, on_ready, stop: asyncio.Event) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as err:
            raise UsageError(
                f"cannot listen on {host}:{port} ({err.strerror}): choose another --port"
            ) from None
        address = runner.addresses[0]
        on_ready(f"http://{_host(address[0])}:{address[1]}")
        await stop.wait()
    finally:
        await runner.cleanup()  # stops listening, lets requests in flight finish, closes


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve_forever(app: web.Application, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down cleanly; ``on_ready(url)`` once listening."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(app, host, port, on_ready, stop)

    asyncio.run(main())


class BackgroundServer:
    """The service on a thread of its own, for tests and notebooks::

    with BackgroundServer(cloud_app(cloud)) as url:
        ...
    """

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self.url = ""
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ddnn-serve", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await _serve(self.app, self.host, self.port, self._listening, self._stop)

        try:
            asyncio.run(main())
        except BaseException as err:
            self._failed = err
            self._ready.set()

    def _listening(self, url: str) -> None:
        self.url = url
        self._ready.set()

    def __enter__(self) -> str:
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed
        return self.url

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
