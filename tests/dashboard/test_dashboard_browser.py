"""The dashboard in a real headless Chromium, against a real 3-node cluster.

The page is opened on the leader, a key is written through a follower with the
"try it" panel and its slot must appear in the log strip; then the leader (the
node that served the page and feeds its event stream) is killed with SIGKILL:
the page must show it down within a couple of seconds, move its event stream
to a live node, and show the newly elected leader.

Another cuts a follower off from its peers (through the per-link proxies of
tests/jepsen/harness.py) under a page it serves: its card must count the
pre-votes it asks, its elections must stay put, and the timeline must keep
one line for them that counts up.

A further test changes the configuration under the page: node 4 is added (a
learner the page shows before its process even runs), then started with
`kv serve --join` and promoted to voter; node 5 joins in one step; node 5 is
removed. The configuration panel must follow each step, with the slot each
change was chosen in and the slot it governs from.

Two more run the page against a cluster started with a client token
(`kv serve --token-file`): opened as `/#token=<token>` it must show the same
live data (every request carries the token, across the nodes too, and the page
follows a leader change); opened as `/` it must say that a token is needed and
how to give it, then work once `#token=...` is added; with a wrong token it
must say the token was refused. The token must never appear in the page.

Screenshots are saved in tests/artifacts/ (not committed) for a person to look at.

Chromium comes from the distribution (`apt-get install chromium`; .ci/run
installs it) and is driven with Playwright's Python package; Playwright's own
browser downloads are not used. Every wait has a deadline; the tests take
about 15 s and 25 s.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jepsen.harness import FaultCluster
from secure_cluster import Nodes, parse_metrics, write_private
from support.cluster import HOST, REPO_ROOT, cluster_factory, free_ports, wait_until
from support.timing import time_limit

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = os.environ.get("KV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEP_TIMEOUT_MS = 20_000
DOWN_SHOWN_WITHIN_S = 3.0  # the page polls every 0.5 s; 1-2 s is typical, the rest is slack

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def settled_leader(cluster, timeout: float = 20.0) -> int:
    """The leader once every live node follows it.

    A majority can follow a leader for a moment while another node, a candidate
    with a higher ballot, is about to take over (two nodes time out together at
    start); the page would then rightly show the other one.
    """
    cluster.wait_for_leader(timeout=timeout)

    def agreed() -> int | None:
        alive = cluster.alive()
        statuses = cluster.statuses(alive)
        leaders = {st["leader"] for st in statuses.values()}
        if len(statuses) != len(alive) or len(leaders) != 1:
            return None
        (leader,) = leaders
        return leader if leader is not None and statuses[leader]["role"] == "leader" else None

    return wait_until(agreed, timeout, "every node to follow one leader")


def elections_card(page, node: int) -> tuple[int, int] | None:
    """(elections, pre-votes) as node's card shows them ("2 (3)"), or None."""
    m = re.fullmatch(r"(\d+) \((\d+)\)", page.inner_text(f'#nodes .node[data-node="{node}"] .f-elections'))
    return (int(m[1]), int(m[2])) if m else None


def try_it(page, server: int, op: str, key: str, value: str = "") -> dict:
    """Use the "try it" panel; the result box's text and data once it is done."""
    page.click(f'#try-servers button[data-server="{server}"]')
    page.select_option("#try-op", op)
    page.fill("#try-key", key)
    if op in ("put", "cas"):
        page.fill("#try-value", value)
    page.click("#try-send")
    page.wait_for_function(
        "() => ['ok', 'error'].includes(document.getElementById('try-result').dataset.status) "
        "&& !document.getElementById('try-send').disabled")
    box = page.locator("#try-result")
    return {"status": box.get_attribute("data-status"), "slot": box.get_attribute("data-slot"),
            "text": box.inner_text()}


def open_page(browser, height: int = 1000, errors: list[str] | None = None):
    """A new page with the step timeout, whose script errors go to `errors`; (page, errors)."""
    errors = [] if errors is None else errors
    page = browser.new_page(viewport={"width": 1440, "height": height})
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def test_dashboard_shows_writes_and_a_leader_change(make_cluster, browser):
    cluster = make_cluster(3)
    leader = settled_leader(cluster)
    follower = next(i for i in cluster.ids if i != leader)
    page, errors = open_page(browser)

    page.goto(cluster.url(leader) + "/")
    page.wait_for_selector('#nodes .node[data-up="true"] >> nth=2')
    page.wait_for_selector(f'#nodes .node[data-node="{leader}"][data-role="leader"][data-up="true"]')
    page.wait_for_function(f"() => document.getElementById('stream-node').textContent === '{leader}'")
    page.wait_for_selector('#conn[data-live="true"]')
    assert page.inner_text("#leader-id") == f"node {leader}"

    # A write through a follower: it is forwarded to the leader and lands in a slot.
    result = try_it(page, follower, "put", "browser-key", "hello from the browser")
    assert result["status"] == "ok", result
    assert result["slot"] and f"slot {result['slot']}" in result["text"], result
    # The slot's box can appear (from another node's view) before its batch is known
    # here: wait for the batch to show, rather than reading the box at once.
    page.wait_for_selector(f'#log-strip .slot[data-slot="{result["slot"]}"]:has-text("browser-key")')
    page.wait_for_selector(f'#log-strip .slot[data-slot="{result["slot"]}"][data-state="applied"]')
    read = try_it(page, leader, "get", "browser-key")
    assert read["status"] == "ok" and "hello from the browser" in read["text"], read
    # The cluster agrees with what the page says.
    assert cluster.get(follower, "browser-key").body["value"] == "hello from the browser"
    # Lease commands and a put's lease show in their slots as what they are.
    lease = cluster.request(leader, "POST", "/v1/leases", {"ttl": 60}).body["id"]
    assert cluster.put(leader, "browser-leased", "v", lease=lease).status == 200
    page.wait_for_selector('#log-strip .slot .cmd:has-text("grant lease (new) ttl 60s")')
    page.wait_for_selector(f'#log-strip .slot .cmd:has-text("browser-leased=v lease {lease}")')
    shot(page, "1-write")

    # Kill the leader, which also served the page and feeds its event stream.
    cluster.kill(leader, signal.SIGKILL)
    killed_at = time.monotonic()
    page.wait_for_selector(f'#nodes .node[data-node="{leader}"][data-up="false"]',
                           timeout=DOWN_SHOWN_WITHIN_S * 1000 + 500)
    shown_down_s = time.monotonic() - killed_at
    assert shown_down_s <= DOWN_SHOWN_WITHIN_S, f"node {leader} shown down after {shown_down_s:.1f}s"
    new_leader = cluster.wait_for_leader(not_=leader, timeout=20)
    page.wait_for_selector(f'#nodes .node[data-node="{new_leader}"][data-role="leader"][data-up="true"]')
    page.wait_for_function(f"() => document.getElementById('leader-id').textContent === 'node {new_leader}'")
    page.wait_for_function(f"() => !['{leader}', '–'].includes(document.getElementById('stream-node').textContent)")
    page.wait_for_selector('#conn[data-live="true"]')
    assert page.locator('#timeline li.leader').filter(has_text=f"node {new_leader} is the leader").count() >= 1
    # The new leader's first slot is marked as such (Batch.lead: it starts the leases' ttls again).
    page.wait_for_selector('#log-strip .slot .noop-label:has-text("new leader")')
    assert page.inner_text("#tile-changes") != "0"
    # Its card counts the election it won and, in brackets, the pre-votes it asked first.
    wait_until(lambda: (c := elections_card(page, new_leader)) and c[0] >= 1 and c[1] >= 1, 5,
               f"node {new_leader}'s card counting its election and pre-votes")

    # The panel says clearly when the server picked is down, and works through a live one.
    down = try_it(page, leader, "put", "browser-key", "to a dead server")
    assert down["status"] == "error" and "down" in down["text"], down
    after = try_it(page, new_leader, "put", "after-failover", "still writing")
    assert after["status"] == "ok" and after["slot"], after
    page.wait_for_selector(f'#log-strip .slot[data-slot="{after["slot"]}"]:has-text("after-failover")')
    # A few seconds of the page on its own after the failover, then the picture.
    page.wait_for_timeout(1500)
    shot(page, "2-after-leader-killed")
    assert not errors, errors


@pytest.fixture
def fault_cluster(tmp_path):
    """Clusters whose peer links go through per-link proxies (tests/jepsen/harness.py)."""
    yield from cluster_factory(tmp_path, FaultCluster)


def test_a_node_cut_off_shows_its_pre_votes(fault_cluster, browser):
    """A follower cut off from its peers asks for pre-votes timeout after timeout: its card
    counts them beside its elections, which stay put, and the timeline keeps one line for
    them that counts up, not a line per poll. The page is served by that node: the others'
    addresses in its membership are the proxy ports of its own links, so it sees them
    down, as a page on its side of the partition would."""
    cluster = fault_cluster(3)
    assert cluster.net is not None
    leader = settled_leader(cluster)
    cut = next(i for i in cluster.ids if i != leader)
    others = [i for i in cluster.ids if i != cut]
    elections = cluster.status(cut)["elections"]
    page, errors = open_page(browser)
    page.goto(cluster.url(cut) + "/")
    page.wait_for_selector('#nodes .node[data-up="true"] >> nth=2')

    cluster.net.partition([cut], others)
    for i in others:
        page.wait_for_selector(f'#nodes .node[data-node="{i}"][data-up="false"]')

    def pre_votes_shown(at_least: int) -> None:
        wait_until(lambda: (c := elections_card(page, cut)) and c[0] == elections and c[1] >= at_least, 15,
                   f"node {cut}'s card showing {at_least} pre-votes and no new election")

    def prevote_lines() -> list[str]:
        return page.locator("#timeline li.prevote").all_inner_texts()

    def count(line: str) -> int:
        m = re.search(r"\((\d+)×\)$", line)
        return int(m.group(1)) if m else 1

    pre_votes_shown(2)
    first = prevote_lines()
    assert first and all(f"node {cut} asked the voters" in t for t in first), first
    pre_votes_shown(6)
    later = prevote_lines()
    assert len(later) == len(first) and count(later[0]) > count(first[0]), (first, later)
    shot(page, "9-pre-votes")

    cluster.net.heal()
    wait_until(lambda: cluster.status(cut)["leader"] == leader, 10, f"node {cut} following node {leader}")
    assert cluster.status(cut)["elections"] == elections
    page.wait_for_selector(f'#nodes .node[data-node="{leader}"][data-role="leader"][data-up="true"]')
    assert not errors, errors


# -- configuration changes --------------------------------------------------------------

JOIN_TIMEOUT_S = 40
CONFIG_TEST_LIMIT_S = 180


def start_joining_node(cluster, node_id: int, via: int, port: int | None = None) -> None:
    """Start node `node_id` with `kv serve --join` through node `via`, on `port` (default: a
    fresh one; a node already added as a member must listen at the address it was given).

    It is registered with the cluster (ids, ports, procs) so that its log is shown
    when a test fails and teardown kills it like any other node.
    """
    port = free_ports(1)[0] if port is None else port
    cmd = [sys.executable, "-m", "cli.main", "serve", "--id", str(node_id), "--join", cluster.url(via),
           "--address", f"{HOST}:{port}", "--data-dir", str(cluster.data_dir(node_id)), "--log-level", "info"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KV_ENDPOINTS", None)
    with open(cluster.log_path(node_id), "ab") as log:
        log.write(f"--- start node {node_id}: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT, env=env, start_new_session=True)
    if node_id not in cluster.ids:
        cluster.ids.append(node_id)
    cluster.ports[node_id] = port
    cluster.procs[node_id] = proc


def members(cluster, via: int) -> dict:
    resp = cluster.request(via, "GET", "/v1/members")
    assert resp.status == 200, resp
    return resp.body


def change(doc: dict, what: str) -> dict:
    (found,) = [c for c in doc["history"] if c["what"] == what]
    return found


def row(node: int, member: str | None = None) -> str:
    sel = f'#config-members .member[data-node="{node}"]'
    return sel + (f'[data-member="{member}"]' if member else "")


def test_dashboard_follows_configuration_changes(make_cluster, browser):
    with time_limit(CONFIG_TEST_LIMIT_S, "configuration test"):
        cluster = make_cluster(3)
        leader = settled_leader(cluster)
        page, errors = open_page(browser, 1200)
        page.goto(cluster.url(leader) + "/")

        # The initial configuration: three voters, the leader marked, no change yet.
        for i in (1, 2, 3):
            page.wait_for_selector(row(i, "voter"))
            addr = page.inner_text(row(i) + " .addr")
            assert addr == cluster.url(i).removeprefix("http://"), (i, addr)
        page.wait_for_selector(row(leader) + '[data-leader="true"]')
        assert page.locator("#config-members .member").count() == 3
        assert page.locator('#config-members .member[data-leader="true"]').count() == 1
        page.wait_for_selector('#config-history li[data-what="initial"]')
        assert page.get_attribute("#config-change", "data-state") == "none"
        alpha = members(cluster, leader)["alpha"]
        assert page.inner_text("#cfg-alpha") == str(alpha)
        page.wait_for_function("() => document.getElementById('sum-voters').textContent === '3'")

        # Node 4 is added before its process runs: the page shows a learner that does not answer.
        port4 = free_ports(1)[0]
        add = cluster.request(leader, "POST", "/v1/members", {"id": 4, "address": f"{HOST}:{port4}"})
        assert add.status == 200, add
        page.wait_for_selector(row(4, "learner"))
        assert page.inner_text(row(4) + " .addr") == f"{HOST}:{port4}"
        page.wait_for_selector('#nodes .node[data-node="4"][data-member="learner"][data-up="false"]')
        added = change(members(cluster, leader), "add 4")
        assert added["effective"] == added["slot"] + alpha
        item = page.wait_for_selector(f'#config-history li[data-what="add 4"][data-slot="{added["slot"]}"]')
        assert f"slot {added['slot']} → {added['effective']}" in item.inner_text()
        assert "learner" in item.inner_text()
        page.wait_for_function("() => document.getElementById('sum-voters').textContent === '3 + 1 learner'")
        shot(page, "3-learner-added")

        # Started with --join (it is already a member: it fetches a snapshot and starts), it
        # catches up, and the leader promotes it: the page shows a live voter.
        start_joining_node(cluster, 4, leader, port4)
        page.wait_for_selector(row(4, "voter"), timeout=JOIN_TIMEOUT_S * 1000)
        page.wait_for_selector('#nodes .node[data-node="4"][data-member="voter"][data-up="true"]')
        promoted = change(members(cluster, leader), "promote 4")
        assert promoted["slot"] > added["slot"] and promoted["effective"] == promoted["slot"] + alpha
        page.wait_for_selector(f'#config-history li[data-what="promote 4"][data-slot="{promoted["slot"]}"]')
        page.wait_for_selector('#timeline li.config:has-text("promote node 4 to voter")')
        page.wait_for_function("() => document.getElementById('sum-voters').textContent === '4'")
        page.wait_for_selector(
            f'#config-change[data-state="settled"]:has-text("slot {promoted["effective"]}")')
        shot(page, "4-learner-promoted")

        # Node 5 joins in one step (add, snapshot, start, promote); the page finds it by itself.
        start_joining_node(cluster, 5, leader)
        page.wait_for_selector(row(5), timeout=JOIN_TIMEOUT_S * 1000)
        page.wait_for_selector(row(5, "voter"), timeout=JOIN_TIMEOUT_S * 1000)
        page.wait_for_selector('#nodes .node[data-node="5"][data-up="true"]')
        page.wait_for_selector('#config-history li[data-what="add 5"]')
        page.wait_for_function("() => document.getElementById('sum-voters').textContent === '5'")
        assert page.locator("#config-members .member").count() == 5

        # Node 5 is removed: it leaves the configuration panel and shows as removed, then goes.
        resp = cluster.request(leader, "DELETE", "/v1/members/5")
        assert resp.status == 200, resp
        page.wait_for_selector(row(5), state="detached")
        page.wait_for_selector('#config-history li[data-what="remove 5"]')
        page.wait_for_function("() => { const el = document.querySelector('#nodes .node[data-node=\"5\"]');"
                               " return !el || el.dataset.member === 'removed'; }")
        page.wait_for_function("() => document.getElementById('sum-voters').textContent === '4'")
        assert page.locator("#config-members .member").count() == 4
        shot(page, "5-node-removed")
        assert not errors, errors



def test_change_in_flight_shows_its_alpha_window(make_cluster, browser):
    """A change in flight, with the slots of its α window still decided by the old voters.

    The leader fills a new change's α window with no-ops at once, so a real change is
    in flight for only milliseconds: here one follower's /v1/dashboard answer is altered
    in the browser (Playwright's request routing) to carry "remove 3", chosen in slot
    1000 and applied through the middle of its window; as the furthest-applied view,
    it is the one the page shows.
    """
    with time_limit(60, "change-in-flight test"):
        cluster = make_cluster(3)
        leader = settled_leader(cluster)
        other = next(i for i in cluster.ids if i != leader)
        alpha = members(cluster, leader)["alpha"]
        slot, applied = 1000, 1000 + alpha // 2
        pending = {"slot": slot, "effective": slot + alpha, "what": "remove 3", "voters": [1, 2], "learners": []}

        def in_flight(route):
            resp = route.fetch()
            doc = resp.json()
            m = doc["members"]
            m.update(applied=applied, members=[e for e in m["members"] if e["id"] != 3], voters=[1, 2],
                     removed=[3], pending=pending, history=m["history"] + [pending])
            route.fulfill(response=resp, json=doc)

        page, errors = open_page(browser, 1200)
        page.route(f"{cluster.url(other)}/v1/dashboard*", in_flight)
        page.goto(cluster.url(leader) + "/")

        box = page.wait_for_selector('#config-change[data-state="pending"]')
        text = box.inner_text()
        assert f"slot {slot}" in text and f"slot {slot + alpha}" in text, text
        assert (f"Slots {slot + 1}–{slot + alpha - 1} are still decided by the old configuration "
                "(voters 1, 2, 3)") in text
        assert "from slot" in text and "voters 1, 2." in text, text
        assert "in flight" in text.lower()
        width = page.eval_on_selector("#config-change .a-fill", "el => parseFloat(el.style.width)")
        assert abs(width - 100 * (applied - slot) / alpha) < 0.1, width
        # Node 3 still votes on the window's slots: shown as leaving, not yet removed.
        page.wait_for_selector(row(3, "leaving"))
        assert f"votes until slot {slot + alpha - 1}" in page.inner_text(row(3))
        page.wait_for_selector('#nodes .node[data-node="3"][data-member="leaving"]')
        page.wait_for_selector('#config-history li[data-what="remove 3"][data-state="pending"]')
        page.wait_for_selector(f'#timeline li.config:has-text("chosen in slot {slot}: remove node 3")')
        shot(page, "6-change-in-flight")
        assert not errors, errors


# -- a cluster with a client token ------------------------------------------------------

TOKEN = "dashboard-t0ken-for-tests"
SECRET = "a cluster secret for the dashboard tests"
TOKEN_TEST_LIMIT_S = 120


@pytest.fixture
def token_nodes(tmp_path):
    """A started 3-node cluster with a cluster secret and a client token; killed at teardown."""
    token_file = write_private(tmp_path / "token", TOKEN)
    secret_file = write_private(tmp_path / "secret", SECRET)
    nodes = Nodes(tmp_path / "cluster", n=3, token=TOKEN,
                  args=["--secret-file", str(secret_file), "--token-file", str(token_file)])
    try:
        yield nodes.start()
    finally:
        nodes.stop_all()
        print(nodes.logs())  # shown only if the test failed


def settled_token_leader(nodes: Nodes, timeout: float = 20.0) -> int:
    """The leader once every live node follows it (see settled_leader)."""
    nodes.wait_leader(timeout=timeout)

    def agreed() -> int | None:
        statuses = {i: nodes.status(i) for i, p in nodes.procs.items() if p.poll() is None}
        leaders = {st["leader"] for st in statuses.values()}
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        return leader if leader in statuses and statuses[leader]["role"] == "leader" else None

    return wait_until(agreed, timeout, "every node to follow one leader")


def refused_requests(nodes: Nodes, i: int) -> float:
    """Requests node i refused for a missing or wrong token (its metrics)."""
    samples = parse_metrics(nodes.metrics(i))[1]
    return sum(v for (name, _), v in samples.items() if name.endswith("http_unauthorized_total"))


def wait_live(page, leader: int, nodes: Nodes | None = None) -> int:
    """The page shows the three nodes up, the leader leading, and events streaming; the
    leader it shows. With `nodes`, whichever node leads by then (on a loaded machine an
    election may have moved the leadership away from `leader`)."""
    page.wait_for_selector('#nodes .node[data-up="true"] >> nth=2')
    page.wait_for_selector('#conn[data-live="true"]')
    if nodes is not None:
        def shown_and_true() -> int | None:
            now = settled_token_leader(nodes)
            text = page.eval_on_selector("#leader-id", "e => e.textContent")
            card = page.query_selector(f'#nodes .node[data-node="{now}"][data-role="leader"][data-up="true"]')
            return now if text == f"node {now}" and card is not None else None
        return wait_until(shown_and_true, STEP_TIMEOUT_MS / 1000, "the page to show the current leader")
    page.wait_for_selector(f'#nodes .node[data-node="{leader}"][data-role="leader"][data-up="true"]')
    page.wait_for_function(f"() => document.getElementById('leader-id').textContent === 'node {leader}'")
    return leader


def test_dashboard_with_a_client_token(token_nodes, browser):
    nodes = token_nodes
    with time_limit(TOKEN_TEST_LIMIT_S, "dashboard token test"):
        leader = settled_token_leader(nodes)
        follower = next(i for i in nodes.ids if i != leader)
        page, errors = open_page(browser)

        page.goto(nodes.url(leader) + f"/#token={TOKEN}")
        wait_live(page, leader)
        page.wait_for_function(f"() => document.getElementById('stream-node').textContent === '{leader}'")
        # The token left the address bar for this tab's sessionStorage.
        assert TOKEN not in page.evaluate("location.href")
        assert page.evaluate("sessionStorage.getItem('kvpaxos-token')") == TOKEN
        assert page.locator("#auth-note").is_hidden()

        # Through a follower: a cross-origin write and slot lookup, both with the token.
        result = try_it(page, follower, "put", "token-key", "written with a token")
        assert result["status"] == "ok", result
        assert result["slot"] and f"slot {result['slot']}" in result["text"], result
        page.wait_for_selector(f'#log-strip .slot[data-slot="{result["slot"]}"]:has-text("token-key")')
        page.wait_for_selector(f'#log-strip .slot[data-slot="{result["slot"]}"][data-state="applied"]')
        shot(page, "7-token")

        # The node feeding the stream dies: the stream moves to a live node, still with the token.
        nodes.kill(leader)
        page.wait_for_selector(f'#nodes .node[data-node="{leader}"][data-up="false"]')
        new_leader = nodes.wait_leader(ids=[i for i in nodes.ids if i != leader], timeout=20)
        page.wait_for_selector(f'#nodes .node[data-node="{new_leader}"][data-role="leader"][data-up="true"]')
        page.wait_for_function(
            f"() => !['{leader}', '–'].includes(document.getElementById('stream-node').textContent)")
        page.wait_for_selector('#conn[data-live="true"]')
        after = try_it(page, new_leader, "put", "token-after", "after the failover")
        assert after["status"] == "ok" and after["slot"], after

        # Every data request the page made carried the token: no node refused one.
        for i in nodes.ids:
            if i != leader:
                assert refused_requests(nodes, i) == 0, i
        assert TOKEN not in page.content()
        assert not errors, errors


def test_dashboard_without_the_token_says_how_to_give_it(token_nodes, browser):
    nodes = token_nodes
    with time_limit(TOKEN_TEST_LIMIT_S, "dashboard missing-token test"):
        leader = settled_token_leader(nodes)
        page, errors = open_page(browser)

        # No token: the node answers 401 and the page says how to open it.
        page.goto(nodes.url(leader) + "/")
        note = page.wait_for_selector('#auth-note[data-auth="missing"]', state="visible")
        text = note.inner_text()
        assert f"{nodes.url(leader)}/#token=<token>" in text, text
        assert "--token-file" in text and "401" in text, text
        page.wait_for_function("() => document.getElementById('conn-text').textContent === 'token required'")
        assert page.get_attribute("#conn", "data-live") == "false"
        assert refused_requests(nodes, leader) > 0
        shot(page, "8-token-missing")

        # Adding #token=... to the address (no reload) brings the live data.
        page.evaluate(f"location.hash = '#token={TOKEN}'")
        wait_live(page, leader, nodes)
        page.wait_for_selector("#auth-note", state="hidden")
        assert TOKEN not in page.evaluate("location.href")
        assert TOKEN not in page.content()

        # A wrong token: refused, said so, and the token is not shown.
        wrong = "not-the-cluster-t0ken"
        other, _ = open_page(browser, errors=errors)
        other.goto(nodes.url(leader) + f"/#token={wrong}")
        note = other.wait_for_selector('#auth-note[data-auth="refused"]', state="visible")
        assert "refused" in note.inner_text() and "#token=<token>" in note.inner_text()
        other.wait_for_function("() => document.getElementById('conn-text').textContent === 'token refused'")
        assert wrong not in other.content() and wrong not in other.evaluate("location.href")
        assert not errors, errors
