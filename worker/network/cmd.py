"""The one way worker/network talks to the kernel: `ip`, `iptables`, `sysctl`, `nsenter` run as
asyncio subprocesses through an injected command runner.

Injecting the runner is what lets the same code wire pods on a real node, inside a lab VM or a
test's private "node" namespace (a runner with a prefix such as `nsenter --net=PATH`), or
against a fake in a unit test of pure logic.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Protocol, Sequence

from worker.network.errors import NetworkError


@dataclass(frozen=True)
class Completed:
    """What one command did: its argv (without any runner prefix), exit code and output."""
    cmd: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    async def __call__(self, argv: Sequence[str], *, stdin: str | None = None) -> Completed: ...


class CommandRunner:
    """Runs commands for real. `prefix` is put before every command, for example
    `("nsenter", "--net=/var/run/netns/node1")` to act inside another node's network namespace."""

    def __init__(self, prefix: Sequence[str] = ()):
        self.prefix = tuple(prefix)
        # the C locale keeps the tools' messages stable: callers recognise "Cannot find device"
        self._env = {**os.environ, "LC_ALL": "C"}

    async def __call__(self, argv: Sequence[str], *, stdin: str | None = None) -> Completed:
        proc = await asyncio.create_subprocess_exec(
            *self.prefix, *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self._env)
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        return Completed(tuple(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def run_checked(run: Runner, argv: Sequence[str], *, stdin: str | None = None,
                      tolerate: Sequence[str] = ()) -> Completed:
    """Run argv; raise NetworkError unless it succeeds or its stderr contains one of `tolerate`
    (how idempotent steps accept "already there" / "already gone")."""
    res = await run(argv, stdin=stdin)
    if res.returncode != 0 and not any(t in res.stderr for t in tolerate):
        raise NetworkError.from_command(argv, res.returncode, res.stderr)
    return res
