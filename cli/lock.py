"""`kv lock KEY [-- COMMAND ...]`: hold a lock (kvpaxos/lock.py) while a command runs."""
from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import click

from cli.common import CliError
from cli.target import connect, target_options
from kvpaxos.lock import LockTimeout

POLL_S = 0.2  # how often a holder looks whether its command ended or its lock was lost
STOP_GRACE_S = 10.0  # a command stopped for a lost lock gets this long after SIGTERM


@click.command(name="lock", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--ttl", type=click.FloatRange(0.3, 3600), default=10.0, show_default=True, metavar="SECONDS",
              help="The lock's time to live: how soon it goes to the next holder if this one dies.")
@click.option("--wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Give up (exit 1) if the lock is not ours within this long [default: wait for ever].")
@target_options(envvar=None)
@click.pass_context
def lock(ctx: click.Context, key: str, command: tuple[str, ...], ttl: float, wait: float | None,
         **target: Any) -> None:
    """Hold the lock KEY while COMMAND runs, then release it and exit with COMMAND's
    status; without COMMAND, hold it until Ctrl-C. COMMAND gets KV_LOCK_KEY and
    KV_LOCK_TOKEN (a fencing token: larger for every later holder) in its
    environment, and is stopped (SIGTERM) if the lock is lost. Put `--` before a
    command that has options of its own: `kv lock locks/backup -- ./backup.sh -v`."""
    with connect(ctx, target, key) as kv:
        holder = kv.lock(key, ttl_s=ttl, timeout_s=wait)
        try:
            token = holder.acquire()
        except LockTimeout:
            raise CliError(f"lock {key!r} not acquired within {wait:g} s") from None
        click.echo(f"locked {key} (token {token})", err=True)
        try:
            if not command:
                while holder.held:
                    time.sleep(POLL_S)
                raise CliError(f"lost the lock {key!r}")
            ctx.exit(_run_holding(holder, key, token, list(command)))
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a lock held without a command ends
        finally:
            holder.release()


def _run_holding(holder: Any, key: str, token: int, command: list[str]) -> int:
    env = {**os.environ, "KV_LOCK_KEY": key, "KV_LOCK_TOKEN": str(token)}
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise CliError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    try:
        while True:
            try:
                return proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                if holder.held:
                    continue
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise CliError(f"lost the lock {key!r}; the command was stopped")
    except KeyboardInterrupt:
        proc.wait()  # it had the Ctrl-C too
        raise
