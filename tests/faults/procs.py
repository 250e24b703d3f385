"""Processes a fault test can break: a real etcd that can be SIGKILLed and started again on
its data dir and ports, `kubelab apiserver` as a child process in its own process group
(kill -9, start again, an admin kubeconfig), and a loopback TCP relay that cuts one
component off from another and heals. The pytest fixtures that start and always stop
them are in conftest.py."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from kubelab import pki
from kubelab.client.client import Client
from kubelab.errors import NotFound, ServiceUnavailable, Timeout
from kubelab.etcd.server import EtcdServer
from tests.faults.deadline import DEADLINE
from tests.integration.conftest import KUBELAB, ROOT, admin_config, free_port


class FaultEtcd(EtcdServer):
    """A real etcd that a test can SIGKILL and start again on the same data dir and ports."""

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "etcd is not running"
        os.kill(self.proc.pid, signal.SIGKILL)  # the launcher exec'd etcd: this pid is etcd's
        self.proc.wait()

    async def restart(self) -> None:
        await self.start()  # start() spawns again when the process is gone


class ApiServerProcess:
    """`kubelab apiserver` as a child process on a fixed port, with an admin kubeconfig."""

    def __init__(self, etcd_endpoint: str, d: Path, *args: str):
        self.etcd_endpoint, self.dir, self.args = etcd_endpoint, d, args
        self.pki_dir = d / "pki"
        pki.ensure_control_plane_pki(self.pki_dir)
        self.address = f"127.0.0.1:{free_port()}"
        self.config = admin_config(self.pki_dir, self.address, d / "admin.conf")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = open(self.dir / f"apiserver.{self.starts}.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            KUBELAB + ["apiserver", "--etcd-servers", self.etcd_endpoint, "--listen", self.address,
                       "--pki-dir", str(self.pki_dir), *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        async with Client.connect(str(self.config), timeout=2.0) as c:
            end = time.monotonic() + DEADLINE
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"apiserver exited: {self.log_tail()}")
                try:
                    await c.namespaces().get("default")
                    return
                except (ServiceUnavailable, Timeout, NotFound):
                    if time.monotonic() > end:
                        raise RuntimeError(f"apiserver not serving: {self.log_tail()}") from None
                    await asyncio.sleep(0.1)

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self) -> str:
        p = self.dir / f"apiserver.{self.starts}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def client(self) -> Client:
        return Client.connect(str(self.config))


class TcpRelay:
    """A loopback TCP relay to `target`: cut() drops every connection and refuses new ones
    (a component cut off from its peer), heal() accepts again on the same port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def heal(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._conns):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.transport.abort()
            return
        if self._server is None:  # cut while this connection was being set up
            w.transport.abort()
            uw.transport.abort()
            return
        self._conns |= {w, uw}
        pumps = [asyncio.create_task(self._pump(r, uw)), asyncio.create_task(self._pump(ur, w))]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for x in (w, uw):
                self._conns.discard(x)
                x.transport.abort()

    @staticmethod
    async def _pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        finally:
            w.transport.abort()
