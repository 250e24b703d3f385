"""Attaching to a container's own stdio through conmon's attach socket (conmon.Paths.attach):
what the runtime daemon's Attach rpc serves, and through it the kubelet's Attach and the API's
pods/attach.

The socket is SOCK_SEQPACKET: each message conmon sends is one read of the container's output
behind a one-byte pipe number (2 stdout, 3 stderr; a terminal's output is stdout); each message
a client sends is written to the container's stdin (a pipe conmon holds open when started with
-i); shutdown(SHUT_WR) closes that stdin (unless conmon runs with --leave-stdin-open: a
container with stdin but not stdinOnce), while output keeps coming until the container ends
and conmon exits. Closing the connection only detaches.

AttachProcess looks like exec's processes (stdout/stderr readers, stdin writer, wait(),
returncode, kill()), so execstream.relay moves its bytes as it moves an exec's; kill() here
detaches and never touches the container.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Callable

STDOUT, STDERR = 2, 3
CHUNK = 4096          # below conmon's read buffer: a SEQPACKET message longer than it is cut
EXIT_WAIT = 10.0      # after the socket closes, conmon has written the exit file or is gone


async def connect(path: Path) -> socket.socket:
    """Connect to the attach socket at path. Through /proc/self/fd of its directory: a bundle's
    path can be longer than a unix socket address may be (108 bytes)."""
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dirfd}/{path.name}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dirfd)
    return sock


class _Stdin:
    """proc.stdin: write() then drain() sends (in CHUNK-sized messages); close() half-closes."""

    def __init__(self, sock: socket.socket):
        self._sock, self._pending, self._closed = sock, [], False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("stdin is closed")
        self._pending += [bytes(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await loop.sock_sendall(self._sock, self._pending.pop(0))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:  # already detached or conmon gone: nothing left to close
                pass

    def is_closing(self) -> bool:
        return self._closed


class AttachProcess:
    def __init__(self, sock: socket.socket, *, stdin: bool, tty: bool, exit_code: Callable[[], int | None]):
        self._sock, self._exit_code = sock, exit_code
        self.stdout = asyncio.StreamReader()
        self.stderr = None if tty else asyncio.StreamReader()
        self.stdin = _Stdin(sock) if stdin else None
        self.returncode: int | None = None
        self.pid = None
        self._detached = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self._sock, 65536):
                target = self.stderr if data[0] == STDERR and self.stderr is not None else self.stdout
                target.feed_data(data[1:])
        except OSError:
            pass
        finally:
            self.stdout.feed_eof()
            if self.stderr is not None:
                self.stderr.feed_eof()

    async def wait(self) -> int:
        """The container's exit code once it ended (its output is over); -9 when detached."""
        await asyncio.shield(self._reader)
        if self.returncode is None:
            deadline = time.monotonic() + EXIT_WAIT
            code = self._exit_code()
            while code is None and not self._detached and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                code = self._exit_code()
            self.returncode = -9 if code is None else code
        return self.returncode

    def kill(self) -> None:
        """Detach: close the connection (conmon closes a stdinOnce container's stdin)."""
        self._detached = True
        self._reader.cancel()
        self._sock.close()

    terminate = kill
