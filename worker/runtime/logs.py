"""Container log files, in the CRI logging format the kubelet reads on real nodes:

    2024-05-01T12:00:00.123456789+00:00 stdout F a complete line
    2024-05-01T12:00:00.123456789+00:00 stderr P a partial line (split, or no newline yet)

The writer is each container's conmon (conmon.py), which owns the container's stdout/stderr
pipes. Rotation is the runtime's, as on a Kubernetes node (the kubelet's container log manager
renames the file and asks CRI-O, hence conmon, to reopen it): when the live file has grown past
max_size, rotate_files() shifts `<path>` to `<path>.1` (`.1` to `.2`, ...; at most `max_files`
files in all) and conmon opens a new `<path>`. The runtime checks at every list(), which the
kubelet calls every relist period; so a rotated file holds what was written up to that check
and may be larger than max_size (conmon 2.1's own --log-size-max would truncate instead).
The reader (read_log) serves `logs [--tail N] [-f]`: it joins P fragments, ends with the last
fragment when no newline came, follows across rotations and stops when told the container
has exited.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 3


def needs_rotation(path: Path, max_size: int) -> bool:
    try:
        return os.stat(path).st_size > max_size
    except FileNotFoundError:
        return False


def rotate_files(path: Path, max_files: int) -> None:
    """`path` becomes `path.1`, `path.1` becomes `path.2`, ...; the oldest beyond max_files
    files in all is dropped (with max_files 1: the live file itself)."""
    path = Path(path)
    if max_files <= 1:
        path.unlink(missing_ok=True)
        return
    for i in range(max_files - 1, 0, -1):
        src = path.with_name(path.name + (f".{i - 1}" if i > 1 else ""))
        if src.exists():
            os.replace(src, path.with_name(f"{path.name}.{i}"))


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
        self.partial: dict[str, tuple[str, str]] = {}  # stream -> (time of the first fragment, text)

    def rest(self) -> list[LogEntry]:
        """Fragments no F ended (the output's last line had no newline), as whole entries."""
        out = [LogEntry(t, stream, text) for stream, (t, text) in self.partial.items()]
        self.partial.clear()
        return sorted(out, key=lambda e: e.time)

    def feed(self, raw: bytes) -> LogEntry | None:
        parsed = parse_line(raw)
        if parsed is None:
            return None
        t, stream, tag, content = parsed
        first, before = self.partial.pop(stream, (t, ""))
        if tag == "P":
            self.partial[stream] = (first, before + content)
            return None
        return LogEntry(first, stream, before + content)


async def read_log_entries(path: Path, *, tail: int | None = None, follow: bool = False,
                           stop: Callable[[], bool] | None = None, poll: float = 0.2) -> AsyncIterator[LogEntry]:
    """Entries of the live log file; the last `tail` ones when given. With follow, keep
    reading as the file grows (across rotations) until stop() says the writer is gone."""
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
        if not follow:
            entries += asm.rest()
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
                for e in asm.rest():
                    yield e
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
