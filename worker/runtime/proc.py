"""How the runtime runs its tools (runc, skopeo, umoci, unshare): one async helper that
captures output and turns a non-zero exit into CommandError carrying the tool's own message."""
from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Callable, Sequence


class CommandError(Exception):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdout: str = ""):
        self.argv, self.returncode, self.stderr, self.stdout = list(argv), returncode, stderr, stdout
        super().__init__(f"{os.path.basename(argv[0])} {_subcommand(argv)} failed "
                         f"(exit {returncode}): {tool_message(stderr or stdout)}")

    @property
    def message(self) -> str:
        return tool_message(self.stderr or self.stdout)


def _subcommand(argv: Sequence[str]) -> str:
    """The first word after the global flags: `runc --root R list` -> "list"."""
    args = list(argv[1:])
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if "=" not in flag and flag in ("--root", "--log", "--log-format", "--criu"):
            args = args[1:]  # its value
    return args[0] if args else ""


_LOGRUS_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def tool_message(text: str) -> str:
    """The human part of a Go tool's error output: logrus `msg="..."` fields, runc's JSON log
    lines, or the last non-empty line."""
    text = text.strip()
    msgs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") and entry.get("msg"):
                msgs.append(entry["msg"])
                continue
        m = _LOGRUS_MSG.search(line)
        if m and ("level=fatal" in line or "level=error" in line):
            msgs.append(m.group(1).encode().decode("unicode_escape", errors="replace"))
    if msgs:
        return msgs[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


async def run(*argv: str, check: bool = True, input: bytes | None = None,
              on_line: Callable[[str], None] | None = None, timeout: float | None = None) -> tuple[int, str, str]:
    """Run argv; return (returncode, stdout, stderr). With on_line, stdout is also fed line by
    line as it comes (pull progress)."""
    p = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        if on_line is None:
            out, err = await asyncio.wait_for(p.communicate(input), timeout)
        else:
            async def pump() -> bytes:
                chunks = []
                async for raw in p.stdout:
                    chunks.append(raw)
                    on_line(raw.decode(errors="replace").rstrip("\n"))
                return b"".join(chunks)
            out, err, _ = await asyncio.wait_for(asyncio.gather(pump(), p.stderr.read(), p.wait()), timeout)
    except BaseException:
        if p.returncode is None:
            p.kill()
            await p.wait()
        raise
    rc = p.returncode
    o, e = out.decode(errors="replace"), err.decode(errors="replace")
    if check and rc != 0:
        raise CommandError(argv, rc, e, o)
    return rc, o, e
