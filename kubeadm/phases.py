"""Ordered, idempotent phases with kubeadm's progress display and error wording, and the
rollback of a failed run (kind's "actions over a shared context; on failure, roll back").

Every phase prints `[name] ...` lines as it works. A phase that fails raises PhaseError (or
anything else, which is wrapped), and the run ends with `error execution phase NAME: message`
after taking back exactly what this run created: the files and directories it records in the
Context (never one that existed before), the services it started, the containers those
started (through the node reset), and the devices the overlay made.
"""
from __future__ import annotations

import inspect
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable


class PhaseError(Exception):
    def __init__(self, phase: str, message: str):
        super().__init__(message)
        self.phase, self.message = phase, message

    def __str__(self) -> str:
        return f"error execution phase {self.phase}: {self.message}"


@dataclass
class Context:
    etc_dir: Path
    var_dir: Path
    say: Callable[[str], None] = print
    created: list[Path] = field(default_factory=list)   # in creation order; undone in reverse
    services_started: bool = False
    values: dict = field(default_factory=dict)          # what one phase hands the next

    def track(self, path: Path) -> Path:
        """Note that this run is about to create path (only if it does not exist yet)."""
        path = Path(path)
        if not path.exists() and path not in self.created:
            # the missing parents too: a run that made /etc/kubelab takes it back whole
            missing = [p for p in reversed(path.parents) if not p.exists() and p not in self.created]
            self.created += missing + [path]
        return path

    def mkdir(self, path: Path) -> Path:
        self.track(path).mkdir(parents=True, exist_ok=True)
        return Path(path)


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[Context], Awaitable[None] | None]
    help: str = ""


async def run_phases(phases: list[Phase], ctx: Context, *, rollback: Callable[[Context], Awaitable[None]]) -> None:
    """Run the phases in order; on the first failure, roll back and raise PhaseError."""
    for phase in phases:
        started = time.monotonic()
        try:
            result = phase.run(ctx)
            if inspect.isawaitable(result):
                await result
        except BaseException as e:  # noqa: BLE001  (Ctrl-C too: a half-made node is rolled back)
            err = e if isinstance(e, PhaseError) else PhaseError(phase.name, _message(e))
            ctx.say(f"[{phase.name}] failed after {time.monotonic() - started:.1f}s; rolling back what this run made")
            try:
                await rollback(ctx)
            except Exception as rb:  # noqa: BLE001
                ctx.say(f"[rollback] WARNING: {_message(rb)}")
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise err from None


def _message(e: BaseException) -> str:
    import asyncio
    if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
        return "interrupted (Ctrl-C or SIGTERM)"
    return str(e) or type(e).__name__


def remove_created(ctx: Context) -> list[Path]:
    """Delete what this run created, newest first; returns what was removed."""
    gone = []
    for path in reversed(ctx.created):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            gone.append(path)
        except OSError as e:
            ctx.say(f"[rollback] WARNING: could not remove {path}: {e}")
    ctx.created.clear()
    return gone
