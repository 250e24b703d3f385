"""Fault-suite fixtures: the pytest face of the suite's modules. Each factory starts what a
test asks for and stops all of it at teardown, even after a failure:

- fault_etcd: a real etcd (procs.FaultEtcd) a test can kill (-9) and start again;
- apiserver_process: `kubelab apiserver` children (procs.ApiServerProcess);
- tcp_relay: loopback relays (procs.TcpRelay) that cut one component off from another;
- lease_churn: leases renewed back to back (load.LeaseChurn).

What the fixtures run lives apart, one concern a module: procs.py (processes and the relay),
load.py (pod writes and lease churn), watchers.py (informer-like watchers and listers),
judge.py (etcd's history and state, and the comparison with what watchers saw),
deadline.py (the suite's bound on every wait).
"""
from __future__ import annotations

import pytest

from kubelab.client.client import Client
from tests.faults.load import LeaseChurn
from tests.faults.procs import ApiServerProcess, FaultEtcd, TcpRelay


@pytest.fixture
async def fault_etcd(tmp_path):
    # fsync on: a SIGKILL must not cost acknowledged writes, and the suite checks that
    srv = FaultEtcd(tmp_path / "etcd", log_path=tmp_path / "etcd.log", heartbeat_ms=10)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def apiserver_process(tmp_path):
    """Factory: `await apiserver_process(etcd_endpoint, *flags)` starts `kubelab apiserver`;
    every one started is stopped at teardown, even after a failure."""
    started: list[ApiServerProcess] = []

    async def make(etcd_endpoint: str, *args: str) -> ApiServerProcess:
        d = tmp_path / f"apiserver{len(started)}"
        d.mkdir()
        p = ApiServerProcess(etcd_endpoint, d, *args)
        started.append(p)
        await p.start()
        return p

    try:
        yield make
    finally:
        for p in started:
            p.stop()


@pytest.fixture
async def tcp_relay():
    """Factory: `relay = await tcp_relay(port)` relays 127.0.0.1:relay.port to port."""
    relays: list[TcpRelay] = []

    async def make(target_port: int) -> TcpRelay:
        r = TcpRelay(target_port)
        relays.append(r)
        await r.heal()
        return r

    try:
        yield make
    finally:
        for r in relays:
            await r.cut()


@pytest.fixture
async def lease_churn():
    """Factory: `churn = lease_churn(client, ns)`; every churn started is stopped at teardown."""
    made: list[LeaseChurn] = []

    def make(client: Client, ns: str, **kw) -> LeaseChurn:
        made.append(LeaseChurn(client, ns, **kw))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            await c.stop()
