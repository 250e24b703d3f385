"""Relaying an exec'd process over a gRPC stream: its stdout/stderr out as messages, stdin in
from the request stream. Shared by the runtime daemon's Exec and the kubelet's Exec, which
speak different messages but move bytes the same way."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable


async def relay(proc, requests, *, message: Callable[[str, bytes], object],
                stdin_field: str = "stdin", close_field: str = "stdinClose") -> AsyncIterator:
    """Yield message("stdout"|"stderr", data) while the process writes; feed stdin meanwhile.

    The caller yields the exit code after this ends, and kills the process if the stream
    ends first (the client went away)."""
    out: asyncio.Queue = asyncio.Queue()

    async def pump(stream, kind: str) -> None:
        if stream is None:
            return
        while data := await stream.read(32768):
            await out.put(message(kind, data))

    async def feed() -> None:
        async for r in requests:
            kind = r.WhichOneof("msg")
            if kind == stdin_field and proc.stdin is not None:
                proc.stdin.write(getattr(r, stdin_field))
                await proc.stdin.drain()
            elif kind == close_field and proc.stdin is not None:
                proc.stdin.close()

    pumps = [asyncio.create_task(pump(proc.stdout, "stdout")), asyncio.create_task(pump(proc.stderr, "stderr"))]
    feeder = asyncio.create_task(feed())
    done = asyncio.gather(*pumps)
    done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" log
    try:
        while not (done.done() and out.empty()):
            getter = asyncio.create_task(out.get())
            await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
    finally:
        feeder.cancel()
        for t in pumps:
            t.cancel()
