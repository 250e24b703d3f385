"""A pytest fixture for real etcd servers, for conftest.py to import:

    from tests.integration.conftest_etcd import etcd_server  # noqa: F401

`etcd_server` is a factory: `srv = await etcd_server(**EtcdServer kwargs)` starts an etcd on
free ports in a fresh temp dir (by default fsync off and a 10ms raft heartbeat, to start
fast). At
teardown, even after a failure, every server it started is stopped (SIGTERM, then SIGKILL),
its log tail printed (pytest shows it for failing tests) and its temp dir removed.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from kubelab.etcd.server import EtcdServer


@pytest.fixture
async def etcd_server():
    servers: list[EtcdServer] = []
    dirs: list[Path] = []

    async def start(**kwargs) -> EtcdServer:
        d = Path(tempfile.mkdtemp(prefix="kubelab-etcd-"))
        dirs.append(d)
        kwargs.setdefault("unsafe_no_fsync", True)
        kwargs.setdefault("heartbeat_ms", 10)  # starts in ~0.1s instead of ~1s
        kwargs.setdefault("log_path", d / "etcd.log")
        srv = EtcdServer(d / "data", **kwargs)
        servers.append(srv)
        await srv.start()
        return srv

    try:
        yield start
    finally:
        errors: list[BaseException] = []
        try:
            for srv in servers:
                try:
                    await srv.stop()
                except BaseException as e:  # noqa: BLE001 - stop the others all the same
                    errors.append(e)
                finally:
                    srv.stop_sync()  # no-op once stopped; kills it if stop() was interrupted
            for srv in servers:
                if srv.log_path and srv.log_path.exists():
                    tail = srv.log_path.read_bytes()[-4000:].decode(errors="replace")
                    if tail.strip():
                        print(f"--- etcd log {srv.log_path} (tail) ---\n{tail}")
        finally:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        if errors:
            raise errors[0]
