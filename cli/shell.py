"""`kv shell`: an interactive prompt for a cluster, like the original demo's menu.

Pick a server by number (`server 2`) and every command goes through that one
node, so you can watch any node accept any request; `server any` goes back to
all of them with failover. Commands: put, refresh, get, delete, cas, txn, list,
watch, lease, status, members, server, servers, help, quit. Arguments follow shell quoting (`put k "a b"`).

With a terminal, the prompt has line editing and history (readline, kept in
~/.kv_history). With piped input there is no prompt or banner, only the
answers, and the exit status is 1 if any command failed:

    printf 'server 2\\nput a 1\\nget a\\n' | kv shell
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import click

from cli.common import DEFAULT_DATA_DIR, resolve_endpoints
from kvpaxos.client import (
    BadRequest, Client, KvError, NotFound, OutcomeUnknown, PreconditionFailed, Unavailable,
)
from kvpaxos.client_support import LEASE_ID_MAX
from kvpaxos.core.commands import TTL_MS_MAX
from kvpaxos.core.txn import CMPS

HISTORY_FILE = "~/.kv_history"
HISTORY_LENGTH = 1000
DEFAULT_TIMEOUT_S = 10.0
CONNECT_PROBE_S = 0.5

HELP = {
    "put": ("put KEY VALUE [TTL | --lease ID]",
            "set KEY to VALUE (deleted TTL seconds later, or when lease ID ends, if given); prints the new version"),
    "refresh": ("refresh KEY TTL", "delete KEY TTL seconds from now unless put or refreshed again; its value stays"),
    "get": ("get KEY", "print KEY's value and version, and its ttl or lease if it has one (a linearizable read)"),
    "delete": ("delete KEY | delete --prefix PREFIX", "delete KEY, or every key under PREFIX (also: del, rm)"),
    "cas": ("cas KEY OLD NEW", "set KEY to NEW only if its value is OLD"),
    "txn": ("txn [if COND...] [then WRITE...] [else WRITE...]",
            "compare keys, then run the `then` writes if every comparison holds, else the `else` ones, "
            "all at once; COND: KEY version [OP] N (0: absent) | KEY value [OP] V | KEY exists | KEY missing, "
            "OP one of = != < > (=, if not given); "
            "WRITE: put KEY VALUE | delete KEY | get KEY (as the writes before it left it)"),
    "list": ("list [PREFIX] [LIMIT]", "keys and values in key order (also: ls)"),
    "watch": ("watch [PREFIX] [COUNT]", "print the next COUNT changes (10) to keys under PREFIX as they "
              "are applied, with their revisions; Ctrl-C stops"),
    "lease": ("lease grant TTL [ID] | lease keepalive ID | lease revoke ID | lease info ID | lease list",
              "grant a lease of TTL seconds (with id ID, if given) and print its id; keep it alive once (its "
              "TTL starts again); revoke it, deleting its keys; show its ttl, time left and keys; list every lease"),
    "status": ("status", "every node: role, leader, ballot, chosen and applied slot, up or down"),
    "members": ("members", "the configuration: voters, learners, the change in flight, the history"),
    "server": ("server [N|any]", "send everything through server N (no failover), or through any"),
    "servers": ("servers", "the servers you can pick, and which are up"),
    "help": ("help [COMMAND]", "this list, or one command's help"),
    "quit": ("quit", "leave (also: exit, Ctrl-D)"),
}
ALIASES = {"del": "delete", "rm": "delete", "ls": "list", "exit": "quit", "?": "help", "q": "quit"}


class ShellError(Exception):
    """A command failed; the message is shown as one `error: ...` line."""


TXN_USAGE = "usage: " + HELP["txn"][0] + "; type `help txn`"


def parse_txn(words: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """`txn`'s words as the comparisons and the two lists of writes of POST /v1/txn:

        if a version 3 b value x c missing then put a 1 delete b else put log failed
        if a version < 9 b value != x then delete a

    An operator word (= != < >) after version or value is one when a word other than
    then or else follows it: `KEY value = then ...` compares with the text "=".
    """
    sections: dict[str, list[dict]] = {"if": [], "then": [], "else": []}
    order = ["if", "then", "else"]
    if not words or words[0] not in sections:
        raise ShellError(TXN_USAGE)
    i, section = 0, ""
    while i < len(words):
        word = words[i]
        if word in sections and (not section or order.index(word) > order.index(section)):
            section, i = word, i + 1
            continue
        rest = words[i:]
        if section == "if":
            if len(rest) >= 2 and rest[1] in ("exists", "missing"):
                sections["if"].append({"key": rest[0], "exists": rest[1] == "exists"})
                i += 2
            elif len(rest) >= 3 and rest[1] in ("version", "value"):
                has_op = rest[2] in CMPS and len(rest) >= 4 and rest[3] not in sections
                cmp, arg = (rest[2], rest[3]) if has_op else ("=", rest[2])
                if rest[1] == "version" and not arg.isdigit():
                    raise ShellError(f"a version must be a whole number, not {arg!r}")
                condition = {"key": rest[0], rest[1]: int(arg) if rest[1] == "version" else arg}
                sections["if"].append(condition if cmp == "=" else {**condition, "cmp": cmp})
                i += 4 if has_op else 3
            else:
                raise ShellError(f"cannot read a comparison at {' '.join(rest[:3])!r}: "
                                 "KEY version [OP] N | KEY value [OP] V | KEY exists | KEY missing")
        elif rest[0] == "put" and len(rest) >= 3:
            sections[section].append({"op": "put", "key": rest[1], "value": rest[2]})
            i += 3
        elif rest[0] in ("delete", "get") and len(rest) >= 2:
            sections[section].append({"op": rest[0], "key": rest[1]})
            i += 2
        else:
            raise ShellError(f"cannot read a write at {' '.join(rest[:3])!r}: put KEY VALUE | delete KEY | get KEY")
    return sections["if"], sections["then"], sections["else"]


@dataclass
class Shell:
    endpoints: str | None
    data_dir: str
    timeout_s: float
    out: Callable[[str], None] = click.echo
    err: Callable[[str], None] = field(default=lambda text: click.echo(text, err=True))
    client_options: dict[str, Any] = field(default_factory=dict)  # e.g. token, from `kv --token`
    server: int | None = None
    urls: list[str] = field(default_factory=list)
    client: Client | None = None

    # -- targets ---------------------------------------------------------------

    def numbered(self) -> dict[int, str]:
        """Server number -> URL, as --server numbers them."""
        return dict(enumerate(resolve_endpoints(None, self.endpoints, self.data_dir), start=1))

    def pick(self, server: int | None) -> None:
        if server is None:
            urls = resolve_endpoints(None, self.endpoints, self.data_dir)
        else:
            try:
                urls = resolve_endpoints(server, self.endpoints, self.data_dir)
            except click.BadParameter as exc:
                raise ShellError(exc.message) from None
        self.close()
        self.server, self.urls = server, urls
        self.client = self.make_client(urls, self.timeout_s)

    def make_client(self, urls: list[str], timeout_s: float) -> Client:
        return Client(urls, timeout_s=timeout_s, **self.client_options)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def target(self) -> str:
        if self.server is None:
            return "any server"
        return f"server {self.server} ({urlsplit(self.urls[0]).netloc})"

    def probe(self, url: str) -> str | None:
        """None if something listens at url, else why not (refused, no answer)."""
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=CONNECT_PROBE_S):
                return None
        except ConnectionRefusedError:
            return "connection refused"
        except TimeoutError:
            return f"no answer within {CONNECT_PROBE_S:g} s"
        except OSError as exc:
            return exc.strerror or str(exc)

    def kv(self) -> Client:
        """The client for the chosen target; fails fast if the one chosen server is down."""
        assert self.client is not None
        if self.server is not None:
            why = self.probe(self.urls[0])
            if why is not None:
                raise ShellError(f"{self.target()} is down ({why}); pick another with "
                                 f"`server N` or `server any`")
        return self.client

    def describe(self, exc: KvError, key: str | None) -> str:
        about = f"key {key!r}" if key is not None else "the request"
        if isinstance(exc, NotFound) and exc.code == "lease_not_found":
            return exc.message  # the node's own words name the lease
        if isinstance(exc, NotFound):
            return f"{about} not found"
        if isinstance(exc, PreconditionFailed):
            return f"not changed: the current value of {about} is not the one given"
        if isinstance(exc, OutcomeUnknown):
            return f"{self.target()} could not say whether the write was applied: {exc.message}"
        if isinstance(exc, Unavailable):
            hint = "" if self.server is None else "; try another with `server N` or `server any`"
            return f"{self.target()} could not serve {about}: {exc.message}{hint}"
        if isinstance(exc, BadRequest):
            return f"bad request for {about}: {exc.message}"
        return f"{about} failed: {exc.code}: {exc.message}"

    # -- commands ----------------------------------------------------------------

    def run(self, line: str) -> bool:
        """Run one command line; False when the shell should stop. Raises ShellError."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ShellError(f"cannot parse that line: {exc}") from None
        if not words:
            return True
        name, args = ALIASES.get(words[0].lower(), words[0].lower()), words[1:]
        if name == "quit":
            return False
        handler = getattr(self, f"do_{name}", None)
        if handler is None:
            raise ShellError(f"unknown command {words[0]!r}; type `help` for the list")
        handler(args)
        return True

    def _arity(self, name: str, args: list[str], low: int, high: int) -> None:
        if not low <= len(args) <= high:
            raise ShellError(f"usage: {HELP[name][0]}")

    def _number(self, args: list[str], index: int, name: str, default: int) -> int:
        """args[index] as a number from 1 to 10000, or `default` when it is not given."""
        if len(args) <= index:
            return default
        if not (args[index].isdigit() and 1 <= int(args[index]) <= 10_000):
            raise ShellError(f"{name} must be a number from 1 to 10000")
        return int(args[index])

    def _call(self, key: str | None, fn: Callable[[Client], Any]) -> Any:
        try:
            return fn(self.kv())
        except KvError as exc:
            raise ShellError(self.describe(exc, key)) from None

    def do_help(self, args: list[str]) -> None:
        if args:
            name = ALIASES.get(args[0].lower(), args[0].lower())
            if name not in HELP:
                raise ShellError(f"no command {args[0]!r}")
            usage, text = HELP[name]
            self.out(f"{usage}\n    {text}")
            return
        width = max(len(u) for u, _ in HELP.values())
        self.out("\n".join(f"  {usage.ljust(width)}  {text}" for usage, text in HELP.values()))
        self.out(f"Now talking to {self.target()}. Quote values with spaces: put k \"a b\".")

    def do_put(self, args: list[str]) -> None:
        self._arity("put", args, 2, 4)
        ttl = lease = None
        if len(args) == 4 and args[2] == "--lease":
            lease = self._lease_id(args[3])
        elif len(args) == 3 and args[2] != "--lease":
            ttl = self._ttl(args[2])
        elif len(args) > 2:
            raise ShellError(f"usage: {HELP['put'][0]}")
        version = self._call(args[0], lambda kv: kv.put(args[0], args[1], ttl=ttl, lease=lease))
        self.out(f"OK (version {version})")

    def do_refresh(self, args: list[str]) -> None:
        self._arity("refresh", args, 2, 2)
        ttl = self._ttl(args[1])
        version = self._call(args[0], lambda kv: kv.refresh(args[0], ttl))
        self.out(f"OK (version {version}, expires in {ttl:g} s)")

    @staticmethod
    def _ttl(text: str) -> float:
        try:
            ttl = float(text)
        except ValueError:
            ttl = -1.0
        if not 0 < ttl <= TTL_MS_MAX / 1000:
            raise ShellError(f"TTL must be a number of seconds above 0 and at most {TTL_MS_MAX // 1000}")
        return ttl

    @staticmethod
    def _lease_id(text: str) -> int:
        if not (text.isascii() and text.isdigit() and 0 < int(text) <= LEASE_ID_MAX):
            raise ShellError(f"a lease ID is a whole number from 1 to {LEASE_ID_MAX}, not {text!r}")
        return int(text)

    def do_get(self, args: list[str]) -> None:
        self._arity("get", args, 1, 1)
        entry = self._call(args[0], lambda kv: kv.get(args[0]))
        expires = "" if entry.ttl is None else f", expires in {entry.ttl:.1f} s"
        lease = "" if entry.lease is None else f", lease {entry.lease}"
        self.out(f"{json.dumps(entry.value, ensure_ascii=False)} (version {entry.version}{expires}{lease})")

    def do_lease(self, args: list[str]) -> None:
        what = args[0].lower() if args else ""
        if what == "grant" and len(args) in (2, 3):
            ttl = self._ttl(args[1])
            wanted = self._lease_id(args[2]) if len(args) == 3 else None
            self.out(str(self._call(None, lambda kv: kv.grant(ttl, wanted))))
        elif what == "keepalive" and len(args) == 2:
            lease_id = self._lease_id(args[1])
            ttl = self._call(None, lambda kv: kv.keepalive(lease_id))
            self.out(f"OK (lease {lease_id} kept alive for {ttl:g} s)")
        elif what == "revoke" and len(args) == 2:
            lease_id = self._lease_id(args[1])
            deleted = self._call(None, lambda kv: kv.revoke(lease_id))
            self.out(f"OK (revoked lease {lease_id}, deleted {deleted} key{'' if deleted == 1 else 's'})")
        elif what == "info" and len(args) == 2:
            lease_id = self._lease_id(args[1])
            info = self._call(None, lambda kv: kv.lease_info(lease_id, keys=True))
            self.out(f"lease {info.id}: ttl {info.ttl:g} s, {info.ttl_left:.1f} s left, "
                     f"{len(info.keys)} key{'' if len(info.keys) == 1 else 's'}")
            for key in info.keys:
                self.out(f"  {key}")
        elif what == "list" and len(args) == 1:
            leases = self._call(None, lambda kv: kv.leases())
            for info in leases:
                self.out(f"{info.id}\tttl {info.ttl:g} s\t{info.ttl_left:.1f} s left\t"
                         f"{info.keys} key{'' if info.keys == 1 else 's'}")
            if not leases:
                self.out("(no leases)")
        else:
            raise ShellError(f"usage: {HELP['lease'][0]}")

    def do_delete(self, args: list[str]) -> None:
        if args and args[0] == "--prefix":
            self._arity("delete", args, 2, 2)
            prefix = args[1]
            count = self._call(None, lambda kv: kv.delete_prefix(prefix))
            self.out(f"OK (deleted {count} key{'' if count == 1 else 's'})")
            return
        self._arity("delete", args, 1, 1)
        self._call(args[0], lambda kv: kv.delete(args[0]))
        self.out("OK (deleted)")

    def do_txn(self, args: list[str]) -> None:
        compare, then, otherwise = parse_txn(args)
        result = self._call(None, lambda kv: kv.txn(compare, then, otherwise))
        ran = "then" if result.succeeded else "else"
        self.out(f"{'succeeded' if result.succeeded else 'did not hold'}: the {ran} writes ran "
                 f"(revision {result.revision})")
        for key, version in result.versions.items():
            self.out(f"  {key}\twas at version {version}" if version else f"  {key}\twas absent")
        for r in result.results:
            done = f"version {r['version']}" if r.get("ok") else str(r.get("error"))
            if r.get("ok") and r.get("op") == "get":
                done = f"{json.dumps(r.get('value'), ensure_ascii=False)} ({done})"
            self.out(f"  {r.get('op')} {r.get('key')}\t{done}")
        if not result.succeeded:
            raise ShellError("the comparisons did not hold: the else writes ran")

    def do_cas(self, args: list[str]) -> None:
        self._arity("cas", args, 3, 3)
        version = self._call(args[0], lambda kv: kv.cas(args[0], args[1], args[2]))
        self.out(f"OK (version {version})")

    def do_list(self, args: list[str]) -> None:
        self._arity("list", args, 0, 2)
        prefix = args[0] if args else ""
        limit = self._number(args, 1, "LIMIT", 100)
        entries, more = self._call(None, lambda kv: kv.list_page(prefix, limit))
        for e in entries:
            self.out(f"{e.key}\t{json.dumps(e.value, ensure_ascii=False)}")
        if not entries:
            self.out("(no keys)" if not prefix else f"(no keys start with {prefix!r})")
        if more:
            self.out(f"(more keys match; showing the first {len(entries)})")

    def do_watch(self, args: list[str]) -> None:
        self._arity("watch", args, 0, 2)
        prefix = args[0] if args else ""
        count = self._number(args, 1, "COUNT", 10)
        seen = 0
        try:
            for e in self.kv().watch(prefix=prefix):
                value = "" if e.value is None else "\t" + json.dumps(e.value, ensure_ascii=False)
                self.out(f"{e.revision}\t{e.type}\t{e.key}{value}")
                seen += 1
                if seen == count:
                    return
        except KvError as exc:
            raise ShellError(self.describe(exc, None)) from None
        except KeyboardInterrupt:  # the client drops the connection of the poll cut off
            self.out(f"(stopped after {seen} change{'' if seen == 1 else 's'})")

    def do_status(self, args: list[str]) -> None:
        self._arity("status", args, 0, 0)
        from cli.main import format_status_table  # cli.main registers this command

        # Through every known node, so that one server down does not hide the others.
        with self.make_client(resolve_endpoints(None, self.endpoints, self.data_dir),
                              min(self.timeout_s, 2.0)) as everyone:
            nodes = everyone.cluster_status()
        self.out(format_status_table(nodes))
        if not any(n.get("up") for n in nodes):
            raise ShellError("no node is reachable")

    def do_members(self, args: list[str]) -> None:
        self._arity("members", args, 0, 0)
        from cli.members import format_members

        self.out(format_members(self._call(None, lambda kv: kv.members())))

    def do_servers(self, args: list[str]) -> None:
        self._arity("servers", args, 0, 0)
        for number, url in self.numbered().items():
            why = self.probe(url)
            mark = "*" if number == self.server else " "
            self.out(f"{mark} {number}  {urlsplit(url).netloc}  {'up' if why is None else 'down (' + why + ')'}")
        if self.server is None:
            self.out("  (talking to any server; pick one with `server N`)")

    def do_server(self, args: list[str]) -> None:
        self._arity("server", args, 0, 1)
        if not args:
            self.out(f"talking to {self.target()}")
            return
        choice = args[0].lower()
        if choice in ("any", "all", "*"):
            self.pick(None)
            self.out("talking to any server (a down one is skipped)")
            return
        if not choice.isdigit() or int(choice) < 1:
            raise ShellError("usage: server N (a server number) or server any")
        self.pick(int(choice))
        why = self.probe(self.urls[0])
        if why is not None:
            self.out(f"talking to {self.target()}, which is down ({why})")
            return
        try:
            with self.make_client(self.urls, 1.0) as one:
                st = one.status(self.urls[0])
            leader = st.get("leader")
            role = st.get("role", "?")
            lead = "it leads" if leader == st.get("id") and role == "leader" else (
                f"leader is node {leader}" if leader is not None else "no leader known yet")
            self.out(f"talking to {self.target()}: node {st.get('id')}, {role}, {lead}")
        except KvError as exc:
            self.out(f"talking to {self.target()} (status unavailable: {exc.message})")


# -- the prompt -------------------------------------------------------------------


def _client_options(root_params: dict[str, Any]) -> dict[str, Any]:
    """Client keyword arguments from the group's security options (--token, --ca-file),
    when this installation has them."""
    try:
        from cli.secure import client_security
    except ImportError:
        return {}
    return client_security(root_params)


def _setup_readline() -> Callable[[], None]:
    """Line editing, history and command completion; returns the function that saves history."""
    try:
        import readline
    except ImportError:
        return lambda: None
    path = os.path.expanduser(HISTORY_FILE)
    try:
        readline.read_history_file(path)
    except (OSError, ValueError):
        pass
    readline.set_history_length(HISTORY_LENGTH)
    names = sorted(set(HELP) | set(ALIASES))

    def complete(text: str, state: int) -> str | None:
        if readline.get_line_buffer().lstrip() != text:
            return None  # complete command names only
        matches = [n + " " for n in names if n.startswith(text)]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")

    def save() -> None:
        try:
            readline.write_history_file(path)
        except OSError:
            pass
    return save


@click.command(short_help="Interactive prompt: pick a server, then put/get/...")
@click.option("--server", "-s", type=click.IntRange(min=1), default=None, metavar="N",
              help="Start talking to server N only (change it with `server N` at the prompt).")
@click.option("--endpoints", "-e", default=None, metavar="URL,...",
              help="Comma-separated node URLs or HOST:PORTs.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Directory of the local cluster (holds cluster.json) [default: ./{DEFAULT_DATA_DIR}].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help=f"Give up a request after this long [default: {DEFAULT_TIMEOUT_S:g}].")
@click.pass_context
def shell(ctx: click.Context, server: int | None, endpoints: str | None, data_dir: str | None,
          timeout: float | None) -> None:
    """Interactive prompt: pick a server number, then put/get/delete/cas/txn/list/watch/lease/status
    (`help` at the prompt lists every command)."""
    root = ctx.find_root().params
    sh = Shell(endpoints=endpoints or root.get("endpoints"),
               data_dir=data_dir or root.get("data_dir") or DEFAULT_DATA_DIR,
               timeout_s=timeout or root.get("timeout") or DEFAULT_TIMEOUT_S,
               client_options=_client_options(root))
    server = server or root.get("server")
    interactive = sys.stdin.isatty()
    failed = False
    sh.pick(None)
    if server is not None:
        try:
            sh.run(f"server {server}")
        except ShellError as exc:
            raise click.BadParameter(str(exc), param_hint="'--server'") from None
    save_history = _setup_readline() if interactive else (lambda: None)
    if interactive:
        servers = ", ".join(f"{n} = {urlsplit(u).netloc}" for n, u in sh.numbered().items())
        sh.out(f"kvpaxos shell. Servers: {servers}.\n"
               f"Talking to {sh.target()}. Type `help` for commands, `quit` to leave.")
    try:
        while True:
            try:
                line = input(f"kv[{sh.server or 'any'}]> " if interactive else "")
            except EOFError:
                if interactive:
                    sh.out("")
                break
            except KeyboardInterrupt:
                sh.out("")  # Ctrl-C drops the line, as in a shell
                continue
            try:
                if not sh.run(line):
                    break
            except ShellError as exc:
                failed = True
                sh.err(f"error: {exc}")
            except KeyboardInterrupt:
                sh.err("interrupted")
    finally:
        save_history()
        sh.close()
    if failed and not interactive:
        ctx.exit(1)
