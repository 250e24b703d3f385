"""Errors of the node's pod network setup (worker/network): one base class the kubelet can
catch to report a sandbox that could not be wired, and the IPAM's "no address left"."""
from __future__ import annotations

import shlex
from typing import Sequence


class NetworkError(Exception):
    """A pod network operation failed. For a failed command, `cmd`, `returncode` and `stderr`
    say which command and what the kernel tool answered."""

    def __init__(self, message: str, *, cmd: Sequence[str] | None = None, returncode: int | None = None,
                 stderr: str = ""):
        super().__init__(message)
        self.cmd = list(cmd) if cmd is not None else None
        self.returncode = returncode
        self.stderr = stderr

    @classmethod
    def from_command(cls, cmd: Sequence[str], returncode: int, stderr: str) -> "NetworkError":
        detail = stderr.strip() or "(no output on stderr)"
        return cls(f"command `{shlex.join(cmd)}` failed (exit {returncode}): {detail}",
                   cmd=cmd, returncode=returncode, stderr=stderr)


class AddressExhausted(NetworkError):
    """Every pod address of the node's podCIDR is allocated."""
