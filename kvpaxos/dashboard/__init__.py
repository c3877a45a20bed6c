"""The live dashboard every node serves: the page at `/` and the data behind it.

Routes (added to the node's app by `setup_dashboard`, called from init_app):

- `GET /` and `GET /dashboard/{app.js,style.css,favicon.svg}`: the page, plain
  files shipped in kvpaxos/dashboard/static (no build step, no CDN);
- `GET /v1/dashboard`: one JSON snapshot of this node's view: its /v1/status,
  its newest log slots with their batches, the configuration as it has applied
  it (voters, learners, the change in flight and the recent changes, as
  /v1/members answers), its message counters and its per-second write
  statistics;
- `GET /v1/events`: the same snapshot as server-sent events, a few per second;
- `GET /v1/dashboard/find?client_id=C&seq=N`: the slot a client's write went
  into, for the page's "try it" panel.

Cross-origin: the page is served by one node and talks to all of them, so
GETs of /v1/status, /v1/events, /v1/dashboard* and /v1/kv* answer any origin
(`Access-Control-Allow-Origin: *`; they carry no credentials). Writes
(PUT/DELETE on /v1/kv/...) are allowed cross-origin only from a page served
by a member of this cluster, so that an unrelated web site open in the same
browser cannot write to the store.

Client token: on a node started with `--token-file`, the page is opened as
`/#token=<token>` and sends `Authorization: Bearer <token>` on every request
(static/app.js; the event stream is then read with fetch(), since EventSource
cannot send headers). A cross-origin GET with that header needs a preflight:
OPTIONS of /v1/status, /v1/events, /v1/dashboard and /v1/dashboard/find answer
it (routes.read_preflight), for pages served by members only, except the open
/v1/status. Which routes need the token is security.OPEN_ROUTES' business,
unchanged here.
"""
from kvpaxos.dashboard.routes import cors_headers, setup_dashboard, write_stats

__all__ = ["cors_headers", "setup_dashboard", "write_stats"]
