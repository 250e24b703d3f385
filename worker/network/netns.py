"""Named network namespaces: the pod sandbox's network, kept alive by a bind mount of the
namespace onto a file in the netns directory (as `ip netns add` does), so it outlives any
process and runc containers can join it by path (`linux.namespaces: {type: network, path}`).

In iproute2's own directory (/var/run/netns) the namespaces are made with `ip netns` so that
`ip netns list` / `ip netns exec` work as a learner expects. Any other directory (the netns
dir is injectable, for lab VMs and tests) gets the same bind mount through `unshare --net=FILE`.
Commands run inside a namespace through `nsenter --net=PATH`, which works for both.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from worker.network.cmd import Runner, run_checked

IPROUTE2_NETNS_DIR = Path("/var/run/netns")


class NetnsDir:
    def __init__(self, netns_dir: Path, run: Runner):
        self.dir = Path(netns_dir)
        self.run = run
        self._iproute2 = self.dir.resolve() == IPROUTE2_NETNS_DIR.resolve()

    def path(self, name: str) -> Path:
        return self.dir / name

    def exists(self, name: str) -> bool:
        """True when the file is a mounted namespace. A plain file (a creation cut short) has the
        directory's device; a namespace bind mount has the nsfs device."""
        try:
            return os.stat(self.path(name)).st_dev != os.stat(self.dir).st_dev
        except FileNotFoundError:
            return False

    async def ensure(self, name: str) -> bool:
        """Create the namespace unless it exists; True when it was created now."""
        if self.exists(name):
            return False
        path = self.path(name)
        path.unlink(missing_ok=True)  # an unmounted leftover would make creation fail
        if self._iproute2:
            await run_checked(self.run, ["ip", "netns", "add", name])
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            path.touch()
            await run_checked(self.run, ["unshare", f"--net={path}", "true"])
        return True

    async def delete(self, name: str) -> None:
        """Unmount and remove the namespace file; idempotent. The namespace itself (with its
        interfaces) goes when the last process inside it exits too."""
        path = self.path(name)
        if self.exists(name):
            if self._iproute2:
                await run_checked(self.run, ["ip", "netns", "delete", name])
            else:
                await run_checked(self.run, ["umount", str(path)], tolerate=("not mounted",))
        path.unlink(missing_ok=True)

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv run inside the namespace."""
        return ["nsenter", f"--net={self.path(name)}", "--", *argv]
