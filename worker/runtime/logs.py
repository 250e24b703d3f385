"""Container log files, in the CRI logging format the kubelet reads on real nodes:

    2024-05-01T12:00:00.123456789Z stdout F a complete line
    2024-05-01T12:00:00.123456789Z stderr P a partial line (split, no newline yet)

The writer (RotatingLog) runs in each container's monitor process (monitor.py), which owns the
container's stdout/stderr pipes; it rotates by size like the kubelet's containerLogMaxSize /
containerLogMaxFiles: `<path>` is live, `<path>.1` the newest rotated file, at most
`max_files` files in all. The reader (read_log) serves `logs [--tail N] [-f]`: it follows
across rotations and stops following when told the container has exited.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

MAX_LINE = 16 * 1024  # longer lines are split into P fragments, as containerd does
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 3


def timestamp(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


class RotatingLog:
    """Append CRI log entries to path, rotating at max_size. Not thread-safe by itself."""

    def __init__(self, path: Path, *, max_size: int = DEFAULT_MAX_SIZE, max_files: int = DEFAULT_MAX_FILES):
        self.path, self.max_size, self.max_files = Path(path), max_size, max(1, max_files)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab", buffering=0)
        self._size = self._f.tell()
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def write(self, stream: str, data: bytes) -> None:
        buf = self._pending[stream] + data
        while True:
            nl = buf.find(b"\n", 0, MAX_LINE + 1)
            if nl >= 0:
                self._entry(stream, "F", buf[:nl])
                buf = buf[nl + 1:]
            elif len(buf) > MAX_LINE:
                self._entry(stream, "P", buf[:MAX_LINE])
                buf = buf[MAX_LINE:]
            else:
                break
        self._pending[stream] = buf

    def flush_stream(self, stream: str) -> None:
        """The stream ended: its unterminated last line becomes a full entry."""
        if self._pending[stream]:
            self._entry(stream, "F", self._pending[stream])
            self._pending[stream] = b""

    def _entry(self, stream: str, tag: str, content: bytes) -> None:
        line = f"{timestamp()} {stream} {tag} ".encode() + content + b"\n"
        if self._size and self._size + len(line) > self.max_size:
            self.rotate()
        self._f.write(line)
        self._size += len(line)

    def rotate(self) -> None:
        self._f.close()
        if self.max_files == 1:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.max_files - 1, 0, -1):
                src = self.path.with_name(self.path.name + (f".{i - 1}" if i > 1 else ""))
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))
        self._f = open(self.path, "ab", buffering=0)
        self._size = 0

    def close(self) -> None:
        for s in self._pending:
            self.flush_stream(s)
        self._f.close()


@dataclass(frozen=True)
class LogEntry:
    time: str
    stream: str
    text: str      # one whole line, without its newline


def parse_line(raw: bytes) -> tuple[str, str, str, str] | None:
    """(time, stream, tag, content) of one CRI log line, None when malformed."""
    parts = raw.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    t, stream, tag = (p.decode(errors="replace") for p in parts[:3])
    content = parts[3].decode(errors="replace") if len(parts) == 4 else ""
    return t, stream, tag, content


class _Assembler:
    """Joins P fragments with the F that ends them, per stream."""

    def __init__(self) -> None:
        self.partial: dict[str, str] = {}

    def feed(self, raw: bytes) -> LogEntry | None:
        parsed = parse_line(raw)
        if parsed is None:
            return None
        t, stream, tag, content = parsed
        if tag == "P":
            self.partial[stream] = self.partial.get(stream, "") + content
            return None
        return LogEntry(t, stream, self.partial.pop(stream, "") + content)


async def read_log_entries(path: Path, *, tail: int | None = None, follow: bool = False,
                           stop: Callable[[], bool] | None = None, poll: float = 0.2) -> AsyncIterator[LogEntry]:
    """Entries of the live log file; the last `tail` ones when given. With follow, keep
    reading as the file grows (across rotations) until stop() says the writer is gone."""
    import asyncio  # here, not at the top: the monitor process imports this module too
    path = Path(path)
    asm = _Assembler()
    f = None
    while f is None:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if not follow or (stop is not None and stop()):
                return
            await asyncio.sleep(poll)
    try:
        data = f.read()
        lines = data.splitlines(keepends=True)
        rest = b""
        if lines and not lines[-1].endswith(b"\n"):
            rest = lines.pop()
        entries = [e for e in (asm.feed(ln) for ln in lines) if e is not None]
        if tail is not None:
            entries = entries[-tail:] if tail > 0 else []
        for e in entries:
            yield e
        if not follow:
            return
        ino = os.fstat(f.fileno()).st_ino
        while True:
            chunk = f.read()
            if chunk:
                rest += chunk
                *complete, rest = rest.split(b"\n")
                for ln in complete:
                    e = asm.feed(ln)
                    if e is not None:
                        yield e
                continue
            try:
                rotated = os.stat(path).st_ino != ino
            except FileNotFoundError:
                rotated = False
            if rotated:  # the writer moved on to a new file: finish this one, then switch
                f.close()
                f = open(path, "rb")
                ino = os.fstat(f.fileno()).st_ino
                continue
            if stop is not None and stop():
                chunk = f.read()  # the writer may have added a last line before stopping
                if chunk:
                    rest += chunk
                    continue
                return
            await asyncio.sleep(poll)
    finally:
        if f is not None:
            f.close()


async def read_log(path: Path, *, tail: int | None = None, follow: bool = False,
                   stop: Callable[[], bool] | None = None, poll: float = 0.2) -> AsyncIterator[str]:
    """The container's output lines (without newlines), as `kubectl logs` prints them."""
    async for e in read_log_entries(path, tail=tail, follow=follow, stop=stop, poll=poll):
        yield e.text
