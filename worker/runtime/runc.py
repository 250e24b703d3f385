"""The runc command line, as the runtime uses it: state, list, start, kill, delete and the
argv of exec. `create` is run by each container's conmon (conmon.py), not from here, so the
container's init is reparented to conmon. runc's own state lives under `--root`
(/run/kubelab/runc by default; lab VMs use a private one)."""
from __future__ import annotations

import json
from pathlib import Path

from .proc import CommandError, run


class Runc:
    def __init__(self, root: Path, *, binary: str = "runc"):
        self.root, self.binary = Path(root), binary

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    async def version(self) -> str:
        _, out, _ = await run(self.binary, "--version")
        first = out.splitlines()[0] if out else "runc"
        return first.replace("runc version ", "runc://")

    async def state(self, cid: str) -> dict | None:
        """runc's view of one container ({status: created|running|paused|stopped, pid...}),
        None when runc does not know it."""
        rc, out, err = await run(*self.argv("state", cid), check=False)
        if rc != 0:
            if "does not exist" in err or "not exist" in err:
                return None
            raise CommandError(self.argv("state", cid), rc, err, out)
        return json.loads(out)

    async def list(self) -> dict[str, dict]:
        if not self.root.exists():
            return {}
        for attempt in range(5):
            rc, out, err = await run(*self.argv("list", "--format", "json"), check=False)
            if rc == 0:
                return {c["id"]: c for c in (json.loads(out) or [])} if out.strip() else {}
            # runc lists the state directories, then stats each: one deleted in between fails
            # the whole listing ("stat <root>/<id>: no such file or directory"); list again
            if "no such file or directory" not in err or attempt == 4:
                raise CommandError(self.argv("list", "--format", "json"), rc, err, out)
        raise AssertionError("unreachable")

    async def start(self, cid: str) -> None:
        await run(*self.argv("start", cid))

    async def kill(self, cid: str, signal: str = "TERM", *, all: bool = False) -> None:
        await run(*self.argv("kill", *(["--all"] if all else []), cid, signal))

    async def delete(self, cid: str) -> None:
        rc, out, err = await run(*self.argv("delete", "--force", cid), check=False)
        if rc != 0 and "does not exist" not in err:
            raise CommandError(self.argv("delete", "--force", cid), rc, err, out)

    def exec_argv(self, cid: str, cmd: list[str], *, tty: bool = False, pid_file: str | None = None) -> list[str]:
        return self.argv("exec", *(["--tty"] if tty else []), *(["--pid-file", pid_file] if pid_file else []),
                         cid, *cmd)
