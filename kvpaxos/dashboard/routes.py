"""HTTP side of the dashboard: the page, snapshots, server-sent events, CORS, write timing."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from kvpaxos.dashboard.stats import WriteStats
from kvpaxos.dashboard.views import LOG_SLOTS, find_command, leader_view, log_window, members_view
from kvpaxos.errors import BadRequest, NotFound

log = logging.getLogger("kvpaxos.dashboard")

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
EVENT_INTERVAL_MS = 250
EVENT_INTERVAL_RANGE = (100, 5000)
RECENT_SERIES_S = 3  # after the first event, each event repeats the last few seconds only
SLOTS_MAX = 200
STATUS_REFRESH_S = 1.0
WRITE_METHODS = ("PUT", "DELETE")
# GET routes the page reads on every member. With a client token it sends
# `Authorization`, which makes the browser ask first (a CORS preflight).
READ_PREFLIGHT_PATHS = ("/v1/status", "/v1/events", "/v1/dashboard", "/v1/dashboard/find", "/v1/watch")
PREFLIGHT_MAX_AGE_S = "600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """Per-app state: the node, its peer transport, write statistics, open event streams."""

    def __init__(self, node: Any, transport: Any, name: Callable[[web.Request, web.StreamResponse], None]) -> None:
        self.node = node
        self.transport = transport
        self.name = name  # what the API's wrapper does to every answer (setup_dashboard)
        self.stats = WriteStats()
        self.closing = asyncio.Event()
        self.streams = 0
        self.status_cache: tuple[float, dict[str, Any]] | None = None


DASHBOARD = web.AppKey("dashboard", Dashboard)


def setup_dashboard(app: web.Application, node: Any, transport: Any, route: Callable[[Handler], Handler],
                    name: Callable[[web.Request, web.StreamResponse], None]) -> Dashboard:
    """Add the dashboard's routes (each through `route`, the API's error wrapper) and
    shutdown hook to `app`. Its CORS headers (cors_headers) and write timing
    (write_stats) are for the API to apply, in the wrapper that serves both; `name`
    is what the wrapper does to each answer (the leader and CORS headers), which the
    event stream does itself before it begins."""
    dash = app[DASHBOARD] = Dashboard(node, transport, name)
    app.router.add_get("/", route(index))
    app.router.add_get("/dashboard/{name}", route(static_file))
    app.router.add_get("/v1/dashboard", route(snapshot))
    app.router.add_get("/v1/dashboard/find", route(find))
    app.router.add_get("/v1/events", route(events))
    app.router.add_route("OPTIONS", "/v1/kv/{key:.*}", route(preflight))
    for path in READ_PREFLIGHT_PATHS:
        app.router.add_route("OPTIONS", path, route(read_preflight))
    app.on_shutdown.append(close_streams)
    return dash


def write_stats(request: web.Request) -> WriteStats:
    """Where a write's latency and outcome go (the throughput and latency charts)."""
    return request.app[DASHBOARD].stats


# -- the page ------------------------------------------------------------------


def _read_static(name: str) -> bytes:
    return resources.files("kvpaxos.dashboard").joinpath("static", name).read_bytes()


async def index(request: web.Request) -> web.Response:
    return _static_response("index.html")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise NotFound(f"no dashboard file {name!r}")
    return _static_response(name)


def _static_response(name: str) -> web.Response:
    try:
        body = _read_static(name)
    except OSError:
        raise NotFound(f"dashboard file {name!r} is missing from this installation") from None
    return web.Response(body=body, content_type=STATIC_FILES[name], charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


# -- snapshots -----------------------------------------------------------------


def _int_param(request: web.Request, name: str, low: int, high: int, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    # fullmatch on ASCII digits: str.isdigit() also accepts "²", which int() refuses.
    if not re.fullmatch(r"-?[0-9]{1,18}", raw) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


async def _status_body(request: web.Request, dash: Dashboard) -> dict[str, Any]:
    """This node's /v1/status document, as the status route makes it.

    The route's answer is reused for up to STATUS_REFRESH_S (it asks SQLite for
    the storage settings, which should not happen several times a second per
    open dashboard); the fields that change as Paxos runs are always fresh.
    """
    from kvpaxos import http as kvhttp  # the API module imports this package

    now = time.monotonic()
    if dash.status_cache is None or now - dash.status_cache[0] >= STATUS_REFRESH_S:
        try:
            resp = await kvhttp.status(request)
            body = json.loads(resp.body)
            if isinstance(body, dict):
                dash.status_cache = (now, body)
        except Exception:  # noqa: BLE001 - the dashboard must not fail with the status route
            log.debug("status route failed; using the node's own status", exc_info=True)
    body = dict(dash.status_cache[1]) if dash.status_cache is not None else {}
    body.update(dash.node.status())
    reachable = dash.transport.reachable()
    peers = body.get("peers")
    if isinstance(peers, dict):
        body["peers"] = {p: {**info, "reachable": reachable.get(int(p), False)}
                         if isinstance(info, dict) and str(p).isdigit() else info
                         for p, info in peers.items()}
    return body


async def build_snapshot(request: web.Request, dash: Dashboard, series_after: int | None,
                         slots: int) -> dict[str, Any]:
    node = dash.node
    now = time.time()
    return {
        "v": 1,
        "node": node.id,
        "now_ms": int(now * 1000),
        "boot": getattr(node, "boot_id", None),
        "status": await _status_body(request, dash),
        "log": log_window(node, slots),
        "leading": leader_view(node),
        "members": members_view(node),
        "counters": dict(node.counters),
        "writes": {"ok": dash.stats.total_ok, "failed": dash.stats.total_failed},
        "series": dash.stats.since(series_after, now),
    }


async def snapshot(request: web.Request) -> web.Response:
    """GET /v1/dashboard[?slots=N][&series_since=SECOND]: one snapshot of this node's view."""
    dash = request.app[DASHBOARD]
    slots = _int_param(request, "slots", 1, SLOTS_MAX, LOG_SLOTS)
    after = _int_param(request, "series_since", 0, 2 ** 53, None)
    return web.json_response(await build_snapshot(request, dash, after, slots))


async def find(request: web.Request) -> web.Response:
    """GET /v1/dashboard/find?client_id=C&seq=N: {"slot": S} or 404 if not in the recent log."""
    client_id = request.query.get("client_id", "")
    seq = _int_param(request, "seq", 1, 2 ** 63, None)
    if not client_id or seq is None:
        raise BadRequest("client_id and seq are required")
    slot = find_command(request.app[DASHBOARD].node, client_id, seq)
    if slot is None:
        raise NotFound(f"no command ({client_id!r}, {seq}) in this node's recent log")
    return web.json_response({"client_id": client_id, "seq": seq, "slot": slot})


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events[?interval_ms=250][&slots=40][&count=N]: snapshots as server-sent events.

    The first event carries the full write series (the last five minutes), the
    later ones only its last few seconds. `count` ends the stream after N events.
    """
    dash = request.app[DASHBOARD]
    interval_ms = _int_param(request, "interval_ms", *EVENT_INTERVAL_RANGE, EVENT_INTERVAL_MS)
    slots = _int_param(request, "slots", 1, SLOTS_MAX, LOG_SLOTS)
    count = _int_param(request, "count", 1, 2 ** 31, None)
    assert interval_ms is not None and slots is not None
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    dash.name(request, resp)  # before the stream begins: the route's wrapper cannot after
    await resp.prepare(request)
    dash.streams += 1
    sent = 0
    try:
        await resp.write(b"retry: 1000\n\n")
        while not dash.closing.is_set() and (count is None or sent < count):
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            after = None if sent == 0 else int(time.time()) - RECENT_SERIES_S
            doc = await build_snapshot(request, dash, after, slots)
            data = json.dumps(doc, separators=(",", ":"))
            sent += 1
            await resp.write(f"id: {sent}\nevent: snapshot\ndata: {data}\n\n".encode())
            if count is not None and sent >= count:
                break
            try:
                await asyncio.wait_for(dash.closing.wait(), interval_ms / 1000)
            except TimeoutError:
                pass
    except (ConnectionError, RuntimeError):
        pass  # the reader went away (aiohttp raises ConnectionResetError or RuntimeError)
    finally:
        dash.streams -= 1
    return resp


async def close_streams(app: web.Application) -> None:
    """On shutdown, end every event stream so the server does not wait for them."""
    app[DASHBOARD].closing.set()


# -- cross-origin ----------------------------------------------------------------


def _readable_cross_origin(path: str) -> bool:
    return (path == "/v1/status" or path == "/v1/events" or path == "/v1/kv" or path == "/v1/watch"
            or path.startswith(("/v1/kv/", "/v1/dashboard")))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def member_origin(origin: str, cluster: dict[int, tuple[str, int]]) -> bool:
    """True if `origin` is the page origin of a cluster member (http://HOST:PORT).

    A loopback member also matches any loopback name for its port, so a page
    opened as http://localhost:7001 may write through 127.0.0.1:7002.
    """
    try:
        parts = urlsplit(origin)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        return False
    for member_host, member_port in cluster.values():
        if member_port != port:
            continue
        member_host = member_host.lower()
        if member_host == host or (_is_loopback(member_host) and _is_loopback(host)):
            return True
    return False


def cors_headers(request: web.Request, response: web.StreamResponse, origin: str) -> None:
    """Let pages read (and the cluster's own pages write) across origins."""
    path = request.path
    if request.method in ("GET", "HEAD") and _readable_cross_origin(path):
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif path.startswith("/v1/kv/") and request.method in WRITE_METHODS + ("OPTIONS",):
        if member_origin(origin, request.app[DASHBOARD].node.config.cluster):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.add("Vary", "Origin")


async def preflight(request: web.Request) -> web.Response:
    """OPTIONS /v1/kv/{key}: the browser asks whether a cross-origin PUT/DELETE (or a GET
    with the client token) may be sent."""
    origin = request.headers.get("Origin", "")
    if not member_origin(origin, request.app[DASHBOARD].node.config.cluster):
        return web.json_response({"error": "origin_not_allowed",
                                  "message": "cross-origin writes are accepted only from pages "
                                             "served by members of this cluster"}, status=403)
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "GET, PUT, DELETE",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
    })


async def read_preflight(request: web.Request) -> web.Response:
    """OPTIONS of a route in READ_PREFLIGHT_PATHS: may a page send a GET with `Authorization`?

    Asked by a dashboard page that has the client token, before it reads another
    member. Only pages served by members of this cluster get a yes, except for
    /v1/status, which is open (it holds no keys or values; the header is not
    even looked at). The answer carries no data; the GET itself still needs the
    token where security.OPEN_ROUTES says so.
    """
    origin = request.headers.get("Origin", "")
    if request.path != "/v1/status" and not member_origin(origin, request.app[DASHBOARD].node.config.cluster):
        return web.json_response({"error": "origin_not_allowed",
                                  "message": "cross-origin reads with a token are accepted only from "
                                             "pages served by members of this cluster"}, status=403)
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": origin or "*",
        "Access-Control-Allow-Methods": "GET",
        "Access-Control-Allow-Headers": "Authorization",
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
        "Vary": "Origin",
    })
