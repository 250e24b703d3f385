"""Integration fixtures: a real etcd on free ports in a temp dir, an in-process API server
with real mTLS, and a whole `kubelab control-plane` as a child process."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubelab import pki
from kubelab.client.client import Client
from kubelab.client.config import ClientConfig, write_config
from kubelab.errors import ApiError
from kubelab.etcd.client import EtcdClient
from kubelab.etcd.server import EtcdServer
from master.apiserver.server import APIServer, Options

ROOT = Path(__file__).resolve().parents[2]
KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def etcd(tmp_path):
    server = EtcdServer(tmp_path / "etcd", unsafe_no_fsync=True, log_path=tmp_path / "etcd.log")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def etcd_client(etcd):
    async with EtcdClient(etcd.endpoint) as c:
        yield c


def admin_config(pki_dir: Path, server: str, path: Path, cn: str = "kubernetes-admin",
                 orgs=("system:masters",)) -> Path:
    ca, ca_key = (pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes()
    cert, key = pki.issue_cert(ca, ca_key, cn, organizations=list(orgs))
    write_config(path, ClientConfig(server=server, ca_pem=ca, cert_pem=cert, key_pem=key))
    return path


@dataclass
class ApiHandle:
    server: APIServer
    client: Client
    config: Path
    address: str

    def new_client(self) -> Client:
        return Client.connect(str(self.config))


async def start_apiserver(etcd: EtcdServer, tmp_path: Path, **opts) -> ApiHandle:
    pki_dir = tmp_path / "pki"
    pki.ensure_control_plane_pki(pki_dir)
    address = f"127.0.0.1:{free_port()}"
    srv = APIServer(Options(etcd_servers=etcd.endpoint, listen=address, pki_dir=pki_dir, **opts))
    await srv.start()
    config = admin_config(pki_dir, address, tmp_path / "admin.conf")
    return ApiHandle(srv, Client.connect(str(config)), config, address)


@pytest.fixture
async def api(etcd, tmp_path):
    h = await start_apiserver(etcd, tmp_path, bookmark_interval=0.5)
    try:
        yield h
    finally:
        await h.client.close()
        await h.server.stop(0)


@dataclass
class ControlPlane:
    data_dir: Path
    config: Path
    env: dict
    proc: subprocess.Popen
    children: list
    port: int = 0

    def kubelab(self, *args, check=True, timeout=60, input=None) -> subprocess.CompletedProcess:
        r = subprocess.run(KUBELAB + list(args), env=self.env, capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"kubelab {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def start(self, *args, log: str) -> subprocess.Popen:
        """A long-running kubelab command (hollow-nodes, a second scheduler...), stopped at teardown."""
        out = open(self.data_dir / log, "wb")
        p = subprocess.Popen(KUBELAB + list(args), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.children.append(p)
        return p

    def client(self) -> Client:
        return Client.connect(str(self.config))


def stop_group(p: subprocess.Popen, timeout: float = 15) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def launch_control_plane(d: Path, *extra: str, port: int = 0) -> ControlPlane:
    """`kubelab control-plane` in its own process group; returns once it says it is ready."""
    port = port or free_port()
    env = dict(os.environ, KUBELAB_CONFIG=str(d / "admin.conf"), PYTHONPATH=str(ROOT))
    log = open(d / "control-plane.log", "ab")
    mark = (d / "control-plane.log").stat().st_size if (d / "control-plane.log").exists() else 0
    proc = subprocess.Popen(KUBELAB + ["control-plane", "--data-dir", str(d), "--listen", f"127.0.0.1:{port}",
                                       *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cp = ControlPlane(d, d / "admin.conf", env, proc, [], port)
    try:
        end = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"control plane exited: {(d / 'control-plane.log').read_text()[-2000:]}")
            if (d / "admin.conf").exists() and b"ready." in (d / "control-plane.log").read_bytes()[mark:]:
                return cp
            if time.monotonic() > end:
                raise RuntimeError(f"control plane not ready: {(d / 'control-plane.log').read_text()[-2000:]}")
            time.sleep(0.2)
    except BaseException:
        stop_control_plane(cp)
        raise


def stop_control_plane(cp: ControlPlane) -> None:
    for c in cp.children:
        stop_group(c)
    stop_group(cp.proc, timeout=30)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    cp = launch_control_plane(tmp_path_factory.mktemp("cp"))
    try:
        yield cp
    finally:
        stop_control_plane(cp)


async def wait_for(pred, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll an async or sync predicate until it returns a truthy value."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = pred()
            if asyncio.iscoroutine(last):
                last = await last
        except ApiError as e:  # not there yet (NotFound, a restarting server): keep polling
            last = e
        if last and not isinstance(last, ApiError):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
