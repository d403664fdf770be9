"""The cloud half as a network service: what the edge offloads in, cloud logits out (``ddnn serve``).

Built on aiohttp: one well-kept package that gives an asyncio HTTP/1.1 server with a request
body limit (413) and graceful shutdown; the service needs nothing an ASGI framework would add,
and plain HTTP keeps the bytes on the wire easy to count and to inspect with curl. grpcio was
the other candidate; it would add generated stubs and HTTP/2 framing between us and the byte
counts the edge reports.

Endpoints:

* ``GET /health``: JSON describing what is served (run, checkpoint digest, feature and image
  shapes, classes, routes and their wires, bottlenecks, batch limit) and the requests answered.
* ``POST /v1/cloud``: edge features z in a feature wire, answered with the cloud logits.
* ``POST /v1/image``: images in an image wire (raw, PNG, JPEG, WebP), answered with the whole
  DDNN's cloud logits: the baseline of offloading the image instead of z.
* ``POST /v1/codes/NAME``: the codes of the run's learned bottleneck NAME, answered with the
  cloud logits through its decoder.

Every POST takes ``Content-Type: application/x-ddnn-features`` and a ``wire`` request body. A
body that does not follow the format gets 400, a wire, shape or bit width the route cannot use
422, a body over the limit 413, another content type 415; each with one line of reason, and the
server goes on serving.

Each route runs one jitted function on batches padded to the next power of two (at most
``max_batch``), every size compiled before the address is printed, so no request waits for
XLA. Computation runs on one worker thread, so ``/health`` answers while a batch computes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import signal
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from aiohttp import web

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.models import feature_shape
from ddnn_jax.core.training import build_model
from ddnn_jax.data import normalize
from ddnn_jax.deploy import auth, wire
from ddnn_jax.rundir import RunDir, as_run, read_run_record, restore_best
from ddnn_jax.rundir.bottlenecks import DeployedBottleneck, deployed_bottleneck
from ddnn_jax.rundir.checkpoints import state_digest

LOG = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 256
# How long a request's body may take to arrive once its headers have: a client that declares a
# body and then trickles or sends nothing is answered 408 and let go, not held until shutdown.
BODY_TIMEOUT_S = 30.0
MAX_BATCH = wire.MAX_BATCH


def batch_sizes(max_batch: int) -> list[int]:
    """The padded batch sizes the cloud compiles: powers of two below ``max_batch``, and it."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return [*sizes, max_batch]


@dataclasses.dataclass(frozen=True)
class Route:
    """One POST route: the kind of wire it reads (``wire.FEATURES``, ``CODES`` or ``IMAGES``), the
    shape of a sample, the param its requests must carry (a bottleneck's bits), and the function
    from a decoded batch [n, *shape] to logits [n, classes], run on the worker thread."""

    kind: str
    shape: tuple[int, ...]
    compute: Callable[[np.ndarray], np.ndarray]
    param: int | None = None

    def describe(self) -> dict[str, Any]:
        """What /health says of it."""
        return {"kind": self.kind, "shape": list(self.shape), "wires": list(wire.wires_of(self.kind))}


class _Padded:
    """A jitted ``apply(variables, batch)`` on batches padded to the sizes of ``batch_sizes``."""

    def __init__(self, apply: Callable, variables: Any, shape: Sequence[int], dtype, max_batch: int):
        self._apply, self._variables = jax.jit(apply), variables
        self.shape, self.dtype, self.sizes = tuple(shape), dtype, batch_sizes(max_batch)

    def warm_up(self) -> None:
        """Compiles every padded batch size."""
        for size in self.sizes:
            jax.block_until_ready(self._apply(self._variables, np.zeros((size, *self.shape), self.dtype)))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        padded = np.zeros((next(s for s in self.sizes if s >= n), *self.shape), self.dtype)
        padded[:n] = batch
        return np.asarray(self._apply(self._variables, padded))[:n]


@dataclasses.dataclass
class CloudHalf:
    """The cloud half of a trained run as routes: the cloud head on features, the whole DDNN on
    images, and each served bottleneck's decoder and cloud head on its codes."""

    describe: dict[str, Any]  # what /health reports about the model
    feature_shape: tuple[int, int, int]
    num_classes: int
    max_batch: int
    routes: dict[str, Route]

    @classmethod
    def load(
        cls,
        run_dir: RunDir | Path,
        max_batch: int = DEFAULT_MAX_BATCH,
        bottlenecks: Sequence[str] | None = None,
    ) -> CloudHalf:
        """Restores the run's best checkpoint and the bottlenecks named (default: all the run has).

        Raises:
          UsageError: a bad ``max_batch``, no such run or bottleneck, or a bottleneck fine-tuned
            on another checkpoint than the run's best.
        """
        if not 1 <= max_batch <= MAX_BATCH:
            raise UsageError(f"--max-batch must lie in 1..{MAX_BATCH}, got {max_batch}")
        run = as_run(run_dir)
        read_run_record(run)
        record, state, epoch = restore_best(run)
        model = build_model(record.train, record.num_classes)
        digest = state_digest(state)
        shape = feature_shape(model, record.image_shape)
        mean, std = jnp.asarray(record.mean, jnp.float32), jnp.asarray(record.std, jnp.float32)
        head = {"params": {"cloud": state.params["cloud"]}}
        if "cloud" in state.batch_stats:
            head["batch_stats"] = {"cloud": state.batch_stats["cloud"]}
        routes = {
            wire.CLOUD_PATH: Route(
                wire.FEATURES,
                shape,
                _Padded(
                    lambda v, z: model.apply(v, z, method=model.cloud_head),
                    head,
                    shape,
                    np.float32,
                    max_batch,
                ),
            ),
            wire.IMAGE_PATH: Route(
                wire.IMAGES,
                tuple(record.image_shape),
                _Padded(
                    lambda v, x: model.apply(v, normalize(x, mean, std))[1],
                    {"params": state.params, "batch_stats": state.batch_stats},
                    record.image_shape,
                    np.uint8,
                    max_batch,
                ),
            ),
        }
        served: dict[str, Any] = {}
        for name in run.bottlenecks() if bottlenecks is None else bottlenecks:
            deployed = _bottleneck(run, name, digest)
            compute = _Padded(
                deployed.logits_of_codes, deployed.variables, deployed.code_shape, np.uint8, max_batch
            )
            routes[wire.codes_path(name)] = Route(wire.CODES, deployed.code_shape, compute, deployed.bits)
            served[name] = deployed.describe()
        describe = {
            "run": run.root.name,  # its name only: /health tells any client, not the disk's layout
            "dataset": record.dataset,
            "epoch": epoch,
            "checkpoint": digest,  # the edge checks it is the same model
            "image_shape": list(record.image_shape),
            "bottlenecks": served,
        }
        return cls(describe, shape, record.num_classes, max_batch, routes)

    def warm_up(self) -> None:
        """Compiles every route at every padded batch size."""
        for route in self.routes.values():
            assert isinstance(route.compute, _Padded)
            route.compute.warm_up()


def _bottleneck(run: RunDir, name: str, digest: str) -> DeployedBottleneck:
    deployed = deployed_bottleneck(run, name)
    if deployed.record.made_from != digest:
        raise UsageError(
            f"bottleneck {name} was fine-tuned on another checkpoint than {run}'s best: "
            f"run 'ddnn bottleneck' again, or serve without it (--bottlenecks)"
        )
    return deployed


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
    routes: Mapping[str, Route],
    info: dict[str, Any],
    body_timeout_s: float = BODY_TIMEOUT_S,
    token: str | None = None,
) -> web.Application:
    """The service of ``routes`` (a CloudHalf's, or any others for tests), with /health.

    Args:
      routes: URL path -> what it reads and computes; each compute runs on one worker thread.
      info: ``num_classes``, ``max_batch`` and whatever else /health should report.
      body_timeout_s: how long a request's body may take to arrive.
      token: when given, every request must carry ``Authorization: Bearer TOKEN`` (else 401,
        nothing of the model disclosed), and /health?challenge=C answers HMAC(TOKEN, C), which
        lets the edge check that it talks to the holder of its token.
    """
    open_paths = (wire.HEALTH_PATH,)
    app = web.Application(middlewares=[] if token is None else [auth.bearer_only(token, open_paths)])
    counters = _Counters()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud")
    described = {path: route.describe() for path, route in routes.items()}
    served_wires = [name for name in wire.WIRES if any(name in r["wires"] for r in described.values())]

    async def health(request: web.Request) -> web.Response:
        if token is not None and not auth.carries(request, token):
            return web.json_response({"status": "ok"})  # up, and nothing more to a stranger
        body = {"status": "ok", **info, "wires": served_wires, "routes": described}
        challenge = request.query.get(auth.CHALLENGE_PARAM)
        if token is not None and challenge:
            body["proof"] = auth.token_proof(token, challenge[:256])
        return web.json_response({**body, **dataclasses.asdict(counters)})

    def infer(route: Route):
        max_batch = info["max_batch"]
        limit = wire.request_bound(wire.wires_of(route.kind), route.shape, route.param or 0, max_batch)
        too_large = f"request body over {limit} bytes ({max_batch} samples): send smaller batches"

        async def handle(request: web.Request) -> web.Response:
            counters.requests += 1
            if request.content_type != wire.CONTENT_TYPE:
                counters.refused += 1
                return _refuse(415, f"send Content-Type {wire.CONTENT_TYPE}")
            if (request.content_length or 0) > limit:  # refused on its headers, before any byte of it
                counters.refused += 1
                return _refuse(413, too_large, close=True)
            try:
                body = await asyncio.wait_for(_read(request, limit), body_timeout_s)
            except web.HTTPRequestEntityTooLarge:
                counters.refused += 1
                return _refuse(413, too_large, close=True)
            except TimeoutError:
                counters.refused += 1
                return _refuse(
                    408, f"the request body did not arrive within {body_timeout_s:g} s", close=True
                )
            except ConnectionResetError as err:  # one line, where aiohttp would log a traceback
                counters.dropped += 1
                LOG.warning("ddnn serve: a client hung up mid-request (%s: %s)", type(err).__name__, err)
                return _refuse(400, "the connection was lost mid-body", close=True)
            try:
                batch = wire.decode(body, route.shape, route.kind, route.param)
            except wire.WireRefused as err:
                counters.refused += 1
                return _refuse(422, str(err))
            except wire.WireError as err:
                counters.refused += 1
                return _refuse(400, str(err))
            n = len(batch.values)
            if n > max_batch:
                counters.refused += 1
                return _refuse(413, f"{n} samples in one request, this server takes {max_batch}")
            try:
                logits = await asyncio.get_running_loop().run_in_executor(worker, route.compute, batch.values)
            except Exception as err:  # the cloud failed on this batch; the next one may be fine
                counters.failed += 1
                return _refuse(500, f"the cloud failed: {type(err).__name__}: {err}")
            bad = wire.non_finite_rows(logits)
            if bad:  # never an answer the edge would take for a prediction
                counters.failed += 1
                return _refuse(500, f"the cloud computed non-finite logits for {bad} of {n} samples")
            counters.samples += n
            return web.Response(body=wire.encode_logits(logits), content_type=wire.LOGITS_CONTENT_TYPE)

        return handle

    async def stop_worker(app: web.Application) -> None:
        worker.shutdown(wait=True)

    app.router.add_get(wire.HEALTH_PATH, health)
    for path, route in routes.items():
        app.router.add_post(path, infer(route))
    app.on_cleanup.append(stop_worker)
    app[COUNTERS] = counters
    return app


async def _read(request: web.Request, limit: int) -> bytes:
    """The whole body, or HTTPRequestEntityTooLarge as soon as it passes ``limit`` bytes (a
    chunked body declares no length to refuse up front)."""
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


def cloud_app(cloud: CloudHalf, token: str | None = None) -> web.Application:
    """The service of a loaded cloud half (``token``: see ``make_app``)."""
    info = {
        **cloud.describe,
        "feature_shape": list(cloud.feature_shape),
        "num_classes": cloud.num_classes,
        "max_batch": cloud.max_batch,
    }
    return make_app(cloud.routes, info, token=token)


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    on_ready,
    stop: asyncio.Event,
    tls: ssl.SSLContext | None = None,
) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as err:
            raise UsageError(
                f"cannot listen on {host}:{port} ({err.strerror}): choose another --port"
            ) from None
        scheme = "http" if tls is None else "https"
        on_ready([f"{scheme}://{_host(address[0])}:{address[1]}" for address in runner.addresses])
        await stop.wait()
    finally:
        await runner.cleanup()  # stops listening, lets requests in flight finish, closes


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve_forever(
    app: web.Application,
    host: str,
    port: int,
    on_ready: Callable[[list[str]], None],
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down cleanly; ``on_ready(urls)`` once listening
    (every address it listens on)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(app, host, port, on_ready, stop, tls)

    asyncio.run(main())


class BackgroundServer:
    """The service on a thread of its own, for tests and notebooks::

    with BackgroundServer(cloud_app(cloud)) as url:
        ...
    """

    def __init__(
        self, app: web.Application, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ):
        self.app, self.host, self.port, self.tls = app, host, port, tls
        self.url = ""
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ddnn-serve", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await _serve(self.app, self.host, self.port, self._listening, self._stop, self.tls)

        try:
            asyncio.run(main())
        except BaseException as err:
            self._failed = err
            self._ready.set()

    def _listening(self, urls: list[str]) -> None:
        self.url = urls[0]
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
