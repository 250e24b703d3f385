"""`kubelab control-plane`: etcd, the API server, the scheduler and the controller manager in
the foreground, for development, tests and benchmarks (kubeadm's `init` will reuse the same
pieces, run as static pods).

On first start it creates the cluster's PKI and the client configs in DATA_DIR; later starts
on the same DATA_DIR reuse them and etcd's data, so nothing is lost. Each component runs as
its own process, as in Kubernetes; a component that dies is restarted with backoff. Ctrl-C
(or SIGTERM) stops them all.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from kubelab import pki
from kubelab.client.config import ClientConfig, write_config
from kubelab.etcd.server import EtcdServer


def register(sub, parents) -> None:
    p = sub.add_parser("control-plane", parents=parents,
                       help="Run etcd, API server, scheduler and controller manager in the foreground")
    p.add_argument("--data-dir", required=True, help="where PKI, configs and etcd data live")
    p.add_argument("--listen", default="127.0.0.1:6443", help="API server address (host:port)")
    p.add_argument("--etcd-servers", default="", help="use these etcd URLs instead of running etcd")
    p.add_argument("--node-monitor-grace-period", type=float, default=50.0,
                   help="seconds without a node lease renewal before the node is NotReady")
    p.add_argument("--node-monitor-period", type=float, default=5.0)
    p.add_argument("--default-toleration-seconds", type=int, default=300,
                   help="how long pods stay on an unreachable node before eviction")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16", help="the range node podCIDRs are cut from")
    p.add_argument("--node-cidr-mask-size", type=int, default=24, help="prefix length of each node's podCIDR")
    p.set_defaults(func=run, daemon=True)


def say(component: str, msg: str) -> None:
    print(f"[{component}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def setup(data_dir: Path, listen: str) -> dict:
    """Create (or load) PKI, client configs and the saved ports. Idempotent."""
    data_dir.mkdir(parents=True, exist_ok=True)
    host = listen.rsplit(":", 1)[0].strip("[]")
    sans = [host] if host not in ("0.0.0.0", "::", "") else []
    cp = pki.ensure_control_plane_pki(data_dir / "pki", sans=sans)
    state_file = data_dir / "control-plane.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if "etcd_client_port" not in state:
        state.update(etcd_client_port=free_port(), etcd_peer_port=free_port())
        state_file.write_text(json.dumps(state))
    if "http_port" not in state:
        # the HTTP API (kubectl's): the API server's default, --listen's port + 1, when free
        port = int(listen.rsplit(":", 1)[1]) + 1
        state["http_port"] = port if port > 1 and port_free(port) else free_port()
        state_file.write_text(json.dumps(state))
    server = listen if host not in ("0.0.0.0", "::", "") else "127.0.0.1:" + listen.rsplit(":", 1)[1]
    http_server = f"{server.rsplit(':', 1)[0]}:{state['http_port']}"
    for name, ck, user in (("admin.conf", cp.admin, "kubernetes-admin"),
                           ("scheduler.conf", cp.scheduler, "system:kube-scheduler"),
                           ("controller-manager.conf", cp.controller_manager, "system:kube-controller-manager")):
        # rewritten every start: the listen address may have changed, certificates may be renewed
        write_config(data_dir / name, ClientConfig(server=server, http_server=http_server, ca_pem=cp.ca.cert,
                                                   cert_pem=ck.cert, key_pem=ck.key), user=user)
    return state


class Component:
    """One supervised child process; its output is prefixed with its name."""

    def __init__(self, name: str, argv: list[str]):
        self.name, self.argv = name, argv
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        asyncio.create_task(self._pump(self.proc))

    async def _pump(self, proc) -> None:
        async for line in proc.stdout:
            say(self.name, line.decode(errors="replace").rstrip())

    async def supervise(self) -> None:
        backoff = 1.0
        while not self.stopping:
            started = time.monotonic()
            await self.start()
            code = await self.proc.wait()
            if self.stopping:
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            say(self.name, f"exited with code {code}; restarting in {backoff:.0f}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        p = self.proc
        if p is None or p.returncode is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(p.wait(), timeout)
        except asyncio.TimeoutError:
            p.kill()
            await p.wait()


def _die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


async def wait_healthy(config: Path, timeout: float = 60.0) -> None:
    from kubelab.client.client import Client
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            async with Client.connect(str(config), timeout=3) as c:
                await c.namespaces().get("default")
                return
        except Exception as e:  # noqa: BLE001
            last = e
            await asyncio.sleep(0.5)
    raise RuntimeError(f"API server not healthy after {timeout:.0f}s: {last}")


async def run(args) -> int:
    from master.controllers.cmd import cidr_error
    err = cidr_error(args)
    if err:  # refuse now rather than let the controller manager exit and restart forever
        print(err, file=sys.stderr)
        return 1
    data_dir = Path(args.data_dir).resolve()
    say("control-plane", f"data dir {data_dir}")
    state = setup(data_dir, args.listen)
    say("certs", f"CA and certificates in {data_dir / 'pki'}")
    etcd = None
    endpoints = args.etcd_servers
    if not endpoints:
        etcd = EtcdServer(data_dir / "etcd", client_port=state["etcd_client_port"],
                          peer_port=state["etcd_peer_port"], log_path=data_dir / "etcd.log")
        await etcd.start()
        endpoints = etcd.endpoint
        say("etcd", f"serving on {endpoints} (data {data_dir / 'etcd'}, log {data_dir / 'etcd.log'})")
    py = [sys.executable, "-m", "kubelab.cli.main"]
    http_listen = f"{args.listen.rsplit(':', 1)[0]}:{state['http_port']}"
    apiserver = Component("apiserver", py + ["apiserver", "--etcd-servers", endpoints, "--listen", args.listen,
                                             "--http-listen", http_listen,
                                             "--pki-dir", str(data_dir / "pki"),
                                             "--default-toleration-seconds", str(args.default_toleration_seconds)])
    scheduler = Component("scheduler", py + ["scheduler", "--config", str(data_dir / "scheduler.conf")])
    cm = Component("controller-manager", py + ["controller-manager", "--config",
                                               str(data_dir / "controller-manager.conf"),
                                               "--node-monitor-grace-period", str(args.node_monitor_grace_period),
                                               "--node-monitor-period", str(args.node_monitor_period),
                                               "--cluster-cidr", args.cluster_cidr,
                                               "--node-cidr-mask-size", str(args.node_cidr_mask_size)])
    components = [apiserver, scheduler, cm]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(apiserver.supervise())]
    try:
        waiter = asyncio.create_task(wait_healthy(data_dir / "admin.conf"))
        await asyncio.wait({waiter, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done() and not stop.is_set():
            waiter.result()
            tasks += [asyncio.create_task(c.supervise()) for c in (scheduler, cm)]
            say("control-plane", f"ready. admin config: {data_dir / 'admin.conf'}")
            say("control-plane", f"try: export KUBELAB_CONFIG={data_dir / 'admin.conf'}; kubelab get ns")
            say("control-plane", f"or the real kubectl: kubectl --kubeconfig {data_dir / 'admin.conf'} get ns")
            await stop.wait()
        else:
            waiter.cancel()
    finally:
        say("control-plane", "stopping")
        for c in components:
            c.stopping = True  # no restarts from here on, whatever exits first
        for c in reversed(components):
            await c.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if etcd is not None:
            await etcd.stop()
        say("control-plane", "stopped")
    return 0


os.environ.setdefault("PYTHONUNBUFFERED", "1")
