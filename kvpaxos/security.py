"""Cluster secret, client token and TLS: reading the files, and the checks.

Peers (the /v1/peer WebSocket), when the cluster has a secret, prove to each
other that they hold it before any Paxos frame is accepted, in both directions:

    acceptor -> dialer   {"auth": "challenge", "nonce": Na}
    dialer   -> acceptor {"auth": "proof", "nonce": Nd, "proof": HMAC(secret, "dialer"   | Na | Nd | D | A)}
    acceptor -> dialer   {"auth": "ok",                  "proof": HMAC(secret, "acceptor" | Na | Nd | D | A)}

D and A are the dialer's and acceptor's node ids; the nonces are fresh random
values, so an old exchange cannot be replayed, and the role label keeps one
side's proof from being reflected back as the other's. The secret never
crosses the wire. Without TLS the frames after the handshake are not
encrypted or integrity-protected: the handshake keeps out processes that do
not hold the secret, TLS keeps out an attacker on the path.

Clients, when the node has a token, send `Authorization: Bearer <token>` on
every route that can show keys or values. Open: OPEN_ROUTES (status, metrics,
the peer endpoint, which the secret guards, and the dashboard's static page and
files), and CORS preflights (OPTIONS, which browsers send without credentials).
The check is on the route that matched, not on the raw path.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvpaxos.config import ConfigError

if TYPE_CHECKING:  # aiohttp is imported where it is used: the kv command does not load it
    from aiohttp import web

SECRET_BYTES_MIN = 16
PROTOCOL = "kvpaxos-peer-auth-v1"
HANDSHAKE_TIMEOUT_S = 5.0
HANDSHAKE_FRAME_MAX = 1024
# Routes that never need the client token: they hold no keys or values.
OPEN_ROUTES = frozenset({"/v1/status", "/metrics", "/v1/peer", "/", "/dashboard/{name}"})


class AuthError(Exception):
    """A peer failed the handshake; the message says how (never the secret)."""


# -- files --------------------------------------------------------------------


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc}") from None


def read_secret_file(path: str) -> bytes:
    """The cluster secret: the file's text without surrounding whitespace, >= 16 bytes."""
    secret = _read_text(path, "secret").encode("utf-8")
    if len(secret) < SECRET_BYTES_MIN:
        raise ConfigError(f"the secret in {path} is shorter than {SECRET_BYTES_MIN} bytes")
    return secret


def read_token_file(path: str) -> str:
    """The client token: one line of printable ASCII without spaces."""
    token = _read_text(path, "token")
    check_token(token, f"the token in {path}")
    return token


def check_token(token: str, what: str = "the token") -> str:
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"{what} must be non-empty printable ASCII without spaces")
    return token


def write_new_secret(path: str) -> bool:
    """Create `path` (mode 0600) holding a fresh random secret; False if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32) + "\n")
    return True


# -- TLS ----------------------------------------------------------------------


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return ctx


def client_ssl_context(ca: str | None) -> ssl.SSLContext:
    """Verifies the server's certificate and host name, against `ca` or the system's CAs."""
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS CA file {ca}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# -- the peer handshake -------------------------------------------------------


def new_nonce() -> str:
    return secrets.token_hex(16)


def proof(secret: bytes, role: str, acceptor_nonce: str, dialer_nonce: str,
          dialer_id: int, acceptor_id: int) -> str:
    msg = f"{PROTOCOL}|{role}|{acceptor_nonce}|{dialer_nonce}|{dialer_id}|{acceptor_id}"
    return hmac.new(secret, msg.encode("utf-8"), hashlib.sha256).hexdigest()


def _same(expected: str, got: Any) -> bool:
    return isinstance(got, str) and hmac.compare_digest(expected.encode(), got.encode("utf-8", "replace"))


def parse_auth_frame(data: Any, kind: str) -> dict[str, Any]:
    """A handshake frame of the given kind, or AuthError."""
    if not isinstance(data, str) or len(data) > HANDSHAKE_FRAME_MAX:
        raise AuthError("expected a small text handshake frame")
    try:
        doc = json.loads(data)
    except ValueError:
        raise AuthError("handshake frame is not JSON") from None
    if not isinstance(doc, dict) or doc.get("auth") != kind:
        raise AuthError(f"expected a {kind!r} handshake frame")
    for name in ("nonce", "proof"):
        value = doc.get(name)
        if value is not None and (not isinstance(value, str) or not 16 <= len(value) <= 128):
            raise AuthError(f"bad {name} in handshake frame")
    return doc


class Handshake:
    """Both sides of the handshake for one node; I/O is the caller's (send/receive text)."""

    def __init__(self, secret: bytes, self_id: int) -> None:
        self.secret = secret
        self.self_id = self_id

    # acceptor side
    def challenge(self) -> tuple[str, str]:
        nonce = new_nonce()
        return nonce, json.dumps({"auth": "challenge", "nonce": nonce})

    def check_dialer(self, frame: Any, acceptor_nonce: str, dialer_id: int) -> str:
        """Verify the dialer's proof; the frame to answer with, or AuthError."""
        doc = parse_auth_frame(frame, "proof")
        dialer_nonce = doc.get("nonce")
        if dialer_nonce is None:
            raise AuthError("proof frame without a nonce")
        expected = proof(self.secret, "dialer", acceptor_nonce, dialer_nonce, dialer_id, self.self_id)
        if not _same(expected, doc.get("proof")):
            raise AuthError("wrong proof: the dialer does not hold the cluster secret")
        mine = proof(self.secret, "acceptor", acceptor_nonce, dialer_nonce, dialer_id, self.self_id)
        return json.dumps({"auth": "ok", "proof": mine})

    # dialer side
    def answer(self, frame: Any, acceptor_id: int) -> tuple[str, Callable[[Any], None]]:
        """The proof frame for a challenge, and the check of the acceptor's reply."""
        doc = parse_auth_frame(frame, "challenge")
        acceptor_nonce = doc.get("nonce")
        if acceptor_nonce is None:
            raise AuthError("challenge without a nonce")
        dialer_nonce = new_nonce()
        mine = proof(self.secret, "dialer", acceptor_nonce, dialer_nonce, self.self_id, acceptor_id)

        def check_reply(reply: Any) -> None:
            got = parse_auth_frame(reply, "ok").get("proof")
            expected = proof(self.secret, "acceptor", acceptor_nonce, dialer_nonce, self.self_id, acceptor_id)
            if not _same(expected, got):
                raise AuthError("wrong proof: the peer does not hold the cluster secret")

        return json.dumps({"auth": "proof", "nonce": dialer_nonce, "proof": mine}), check_reply


# -- the client token -----------------------------------------------------------


def token_middleware(token: str, on_refused: Callable[[web.Request], None],
                     name: Callable[[web.Request, web.StreamResponse], None] | None = None) -> Any:
    """aiohttp middleware: 401 JSON for requests without the bearer token (see is_open);
    `name` is given each refusal before it is sent (the API's CORS headers)."""
    from aiohttp import web

    expected = f"Bearer {token}".encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        if not is_open(request):
            got = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(got, expected):
                on_refused(request)
                refusal = web.json_response(
                    {"error": "unauthorized",
                     "message": "this node requires 'Authorization: Bearer <token>'"},
                    status=401, headers={"WWW-Authenticate": 'Bearer realm="kvpaxos"'})
                if name is not None:
                    name(request, refusal)
                return refusal
        return await handler(request)

    return require_token


def is_open(request: web.Request) -> bool:
    """Whether a request needs no client token: its route cannot show keys or values."""
    if request.method == "OPTIONS":
        return True
    resource = request.match_info.route.resource  # None when no route matched (404, 405)
    return resource is not None and resource.canonical in OPEN_ROUTES


def bearer_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- what a node uses to reach its peers ----------------------------------------


def peer_ssl_context(config: Any) -> ssl.SSLContext | None:
    """For dialing peers (WebSocket, status, snapshots): TLS iff this node serves TLS."""
    return client_ssl_context(config.tls_ca) if config.tls_cert else None


def peer_session(config: Any, **kwargs: Any) -> Any:
    """An aiohttp session for a node's HTTP calls to its peers: their scheme's TLS
    settings, and the client token (peers' data routes need it too)."""
    import aiohttp

    ctx = peer_ssl_context(config)
    connector = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
    return aiohttp.ClientSession(connector=connector, headers=bearer_headers(config.token), **kwargs)


def peer_url(config: Any, peer: int, path: str) -> str:
    host, port = config.cluster[peer]
    host = f"[{host}]" if ":" in host else host
    return f"{config.scheme}://{host}:{port}{path}"


def serve_options(secret_file: str | None = None, token_file: str | None = None,
                  tls_cert: str | None = None, tls_key: str | None = None,
                  tls_ca: str | None = None) -> dict[str, Any]:
    """NodeConfig fields from `kv serve`'s security options, checked (ConfigError)."""
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if tls_ca and not tls_cert:
        raise ConfigError("--tls-ca needs --tls-cert and --tls-key (TLS is all or nothing)")
    if tls_cert:
        server_ssl_context(tls_cert, tls_key)  # fail now, with the file names, not at bind time
        client_ssl_context(tls_ca)
    return {"secret": read_secret_file(secret_file) if secret_file else None,
            "token": read_token_file(token_file) if token_file else None,
            "tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca}
