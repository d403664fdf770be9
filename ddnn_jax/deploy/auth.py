"""The shared token between the edge and the cloud: made, read, required on every request, and
proven by the server (an HMAC of the edge's fresh challenge), so that neither half talks to a
stranger. A server that listens beyond this machine without one is refused unless told to let
anyone in."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ssl
from pathlib import Path

from aiohttp import web

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.files import atomic_file
from ddnn_jax.common.limits import read_bounded

CHALLENGE_PARAM = "challenge"  # GET /health?challenge=HEX: the server proves it holds the token


def token_proof(token: str, challenge: str) -> str:
    """What a server holding ``token`` answers to ``challenge``: HMAC-SHA256, hex."""
    return hmac.new(token.encode(), challenge.encode(), hashlib.sha256).hexdigest()


def read_token(path) -> str:
    """The shared token in the file at ``path`` (its first line), checked: at least 16 characters."""
    try:
        token = read_bounded(path, 4096, "token file").decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(
            f"cannot read the token in {path} ({err}): give the file 'ddnn serve --new-token' wrote"
        ) from None
    if len(token) < 16 or not token.isprintable() or " " in token:
        raise UsageError(
            f"{path} holds no token of 16 or more printable characters: make one with --new-token"
        )
    return token


def carries(request: web.Request, token: str) -> bool:
    """Whether the request carries ``token`` as its bearer token (compared in constant time)."""
    given = request.headers.get("Authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def bearer_only(token: str, open_paths: tuple[str, ...]):
    """Middleware letting through only requests that carry the token, but for ``open_paths``
    (/health, which then says no more than that the service is up)."""

    @web.middleware
    async def check(request: web.Request, handler):
        if not carries(request, token) and request.path not in open_paths:
            reason = "send the shared token: Authorization: Bearer TOKEN (ddnn edge --token-file)\n"
            return web.Response(status=401, text=reason, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's TLS context of a certificate chain and its private key (PEM files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise UsageError(
            f"cannot load --tls-cert {cert} with --tls-key {key} ({err}): give PEM files"
        ) from None
    return context


def check_exposure(host: str, token: str | None, no_auth: bool) -> str | None:
    """Refuses to listen beyond this machine without a token, unless told to let anyone in;
    then returns the warning to print (None when there is nothing to warn of)."""
    if host in LOOPBACK or token is not None:
        return None
    where = "every interface" if host in ("", "0.0.0.0", "::") else host
    if not no_auth:
        raise UsageError(
            f"--host '{host}' listens on {where}, where anyone who reaches it could use the "
            "cloud: give --new-token FILE (or --token-file FILE), or --no-auth to let anyone in"
        )
    return f"ddnn serve: warning: --no-auth on {where}: anyone who reaches it can use the cloud"


def new_token(path: Path) -> str:
    """A fresh random token written to ``path`` (readable by its owner only), never over a file."""
    if path.exists():
        raise UsageError(f"{path} exists: reuse it with --token-file, or name a new file")
    token = secrets.token_urlsafe(32)
    with atomic_file(path, "w") as f:
        f.write(token + "\n")
    path.chmod(0o600)
    return token
