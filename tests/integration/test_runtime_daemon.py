"""The container runtime as its own daemon: `kubelab runtime` on a unix socket in a temp dir
(private root, runc root, image dir and cgroup parent), used through RemoteRuntime and
RemoteImageStore exactly as the kubelet uses the in-process classes. Containers outlive the
daemon; everything is removed afterwards, even when the test fails."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from worker.runtime import cgroups, conmon
from worker.runtime.images import ImageStore
from worker.runtime.remote import RemoteImageStore, RemoteRuntime
from worker.runtime.runtime import ContainerCreateError, ContainerNotFound, ContainerSpec, Runtime

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runc containers need root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("runc", "umoci", "skopeo")),
                       reason="needs runc, umoci and skopeo"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static"),
]

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "docker.io/library/busybox:latest"


class Daemon:
    def __init__(self, base: Path, cgroup_parent: str):
        self.base, self.cgroup_parent = base, cgroup_parent
        self.root, self.images, self.runc_root = base / "node", base / "images", base / "run" / "runc"
        self.sock = base / "runtime.sock"
        self.endpoint = f"unix://{self.sock}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.base / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.runtime.server", "--root-dir", str(self.root),
             "--image-dir", str(self.images), "--runc-root", str(self.runc_root),
             "--cgroup-parent", self.cgroup_parent, "--listen", self.endpoint],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"the runtime daemon died: {self.log()}"
            if self.sock.exists():
                rt = RemoteRuntime(self.endpoint)
                try:
                    if (await rt.version()).startswith("runc://"):
                        return
                except Exception:  # noqa: BLE001
                    pass
                finally:
                    await rt.close()
            assert time.monotonic() < deadline, f"the runtime daemon did not come up: {self.log()}"
            await asyncio.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        try:
            return (self.base / "daemon.log").read_text()[-8000:]
        except OSError:
            return ""


def leftovers(base: Path, runc_root: Path, cgroup_parent: str) -> list[str]:
    found = []
    if runc_root.exists():
        out = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True).stdout
        found += [f"runc container {c}" for c in out.split()]
    mountinfo = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {ln.split()[4]}" for ln in mountinfo.splitlines() if str(base) in ln]
    found += [f"cgroup {h / cgroup_parent.strip('/')}" for h in cgroups.hierarchies()
              if (h / cgroup_parent.strip("/")).exists()]
    for proc in Path("/proc").glob("[0-9]*"):  # the daemon and the container monitors name the base dir
        try:
            cmdline = (proc / "cmdline").read_bytes()
            zombie = ") Z" in (proc / "stat").read_text()
        except OSError:
            continue
        if str(base).encode() in cmdline and not zombie:
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"process {proc.name}: {argv[:200]}")
    return found


async def tear_down(d: "Daemon", parent: str, clients: list) -> list[str]:
    """Stop the daemon and remove whatever is left in process, on the same directories, each
    piece on its own so that one failure does not keep the rest in place."""
    errors = []
    for c in clients:
        try:
            await c.close()
        except Exception as e:  # noqa: BLE001 - reported, the teardown goes on
            errors.append(f"closing a client: {e!r}")
    try:
        d.stop()
    except Exception as e:  # noqa: BLE001
        errors.append(f"stopping the daemon: {e!r}")
    local = Runtime(d.root, runc_root=d.runc_root, images=ImageStore(d.images), cgroup_parent=parent)
    try:
        containers = [st.id for st in await local.list()]
    except Exception as e:  # noqa: BLE001
        errors.append(f"listing containers: {e!r}")
        containers = [p.name for p in local.containers_dir.iterdir()] if local.containers_dir.exists() else []
    for cid in containers:
        try:
            await local.remove(cid)
        except Exception as e:  # noqa: BLE001
            errors.append(f"removing container {cid}: {e!r}")
    for u in local.sandbox_uids():
        try:
            await local.remove_sandbox(u)
        except Exception as e:  # noqa: BLE001
            errors.append(f"removing sandbox {u}: {e!r}")
    errors += [f"cgroup {p} is busy" for p in cgroups.remove(parent)]
    return errors


async def wait_state(rt, cid: str, state: str, timeout: float = 60.0):
    """The container's status once it is in state; the test fails if it is not within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        st = await rt.status(cid)
        if st.state == state:
            return st
        assert time.monotonic() < deadline, f"container {cid[:12]} still {st.state} after {timeout}s, wanted {state}"
        await asyncio.sleep(0.1)


def spec(uid: str, name: str, command: list[str], attempt: int = 0) -> ContainerSpec:
    return ContainerSpec(pod_uid=uid, pod_name="daemon-pod", namespace="default", container_name=name,
                         image="busybox", attempt=attempt, command=command, env={"WHO": "daemon"},
                         labels={"kubelab.pod.uid": uid, "kubelab.container.name": name, "kubelab.attempt": str(attempt)})


async def test_runtime_daemon(tmp_path):
    # a short base path: unix socket paths are limited to 108 bytes
    base = Path(tempfile.mkdtemp(prefix="kl-rtd-"))
    parent = f"/kubelab-test-{secrets.token_hex(4)}"
    d = Daemon(base, parent)
    clients: list = []
    uid = "uid-daemon-" + secrets.token_hex(3)
    try:
        await ImageStore(d.images).build_busybox(BUSYBOX)
        d.start()
        await d.ready()
        assert stat.S_IMODE(d.sock.stat().st_mode) == 0o600

        rt, images = RemoteRuntime(d.endpoint), RemoteImageStore(d.endpoint)
        clients += [rt, images]
        assert (await rt.version()).startswith("runc://")
        info = images.get("busybox")  # synchronous, as ImageStore.get
        assert info is not None and info.ref == BUSYBOX
        assert images.get("docker.io/library/nothing:here") is None
        assert (await images.status("busybox")).digest == info.digest  # the kubelet's async form
        assert await images.status("docker.io/library/nothing:here") is None
        assert [i.ref for i in images.list()] == [BUSYBOX]

        # errors keep their classes and messages across the wire
        with pytest.raises(ContainerNotFound):
            await rt.status("0" * 64)
        bad = spec(uid, "bad", ["true"])
        bad.image = "docker.io/library/nothing:here"
        with pytest.raises(ContainerCreateError, match="not present on this node"):
            await rt.create(bad)

        # a container in the host network that echoes and exits
        echo = await rt.create(spec(uid, "echo", ["sh", "-c", "echo hello $WHO; echo world"]))
        assert (await rt.status(echo)).state == "created"
        await rt.start(echo)
        st = await wait_state(rt, echo, "exited")
        assert (st.state, st.exit_code, st.reason) == ("exited", 0, "Completed")
        assert st.spec is not None and st.spec.container_name == "echo" and st.spec.netns_path is None
        assert st.spec.env == {"WHO": "daemon"} and st.labels["kubelab.container.name"] == "echo"
        assert st.started_at and st.finished_at and st.finished_at >= st.started_at and st.image_id
        assert [ln async for ln in rt.read_logs(echo)] == ["hello daemon", "world"]
        assert [ln async for ln in rt.read_logs(echo, tail=1)] == ["world"]
        with pytest.raises(ContainerNotFound):
            [ln async for ln in rt.read_logs("f" * 64)]

        # a running one: exec_sync and a streaming exec
        sleeper = await rt.create(spec(uid, "sleeper", ["sleep", "300"]))
        await rt.start(sleeper)
        assert (await wait_state(rt, sleeper, "running")).state == "running"
        assert await rt.exec_sync(sleeper, ["echo", "hi"], timeout=10) == (0, b"hi\n", b"")
        assert await rt.exec_sync(sleeper, ["sh", "-c", "echo $WHO; echo err >&2; exit 3"], timeout=10) == \
            (3, b"daemon\n", b"err\n")
        proc = await rt.exec(sleeper, ["sh", "-c", "cat; echo done >&2"], stdin=True)
        proc.stdin.write(b"ping\n")
        await proc.stdin.drain()
        proc.stdin.write(b"pong\n")
        proc.stdin.close()
        out, err = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), proc.stderr.read()), 20)
        assert (out, err, await proc.wait(), proc.returncode) == (b"ping\npong\n", b"done\n", 0, 0)
        tty = await rt.exec(sleeper, ["sh", "-c", "tty; exit 5"], tty=True)
        assert tty.stderr is None
        assert b"/dev/pts/" in await asyncio.wait_for(tty.stdout.read(), 20)
        assert await tty.wait() == 5
        hung = await rt.exec(sleeper, ["sleep", "100"])
        hung.kill()
        assert await asyncio.wait_for(hung.wait(), 10) != 0
        with pytest.raises(ContainerNotFound):
            await rt.exec("e" * 64, ["true"])

        listed = {c.id: c for c in await rt.list()}
        assert set(listed) == {echo, sleeper} and listed[sleeper].state == "running"
        assert rt.sandbox_uids() == [uid] and await rt.list_sandboxes() == [uid]

        # containers outlive the daemon: stop it, start it again, they are still there
        meta = json.loads((d.root / "containers" / sleeper / "meta.json").read_text())
        watcher = meta["monitor_pid"]
        for c in clients:
            await c.close()
        clients.clear()
        assert d.stop() == 0, d.log()
        assert not d.sock.exists()
        assert (await Runtime(d.root, runc_root=d.runc_root, images=ImageStore(d.images)).status(sleeper)).state \
            == "running"
        d.start()
        await d.ready()
        rt = RemoteRuntime(d.endpoint)
        clients.append(rt)
        listed = {c.id: c for c in await rt.list()}
        assert set(listed) == {echo, sleeper}
        assert listed[sleeper].state == "running" and listed[echo].exit_code == 0
        # the same conmon watched the container throughout and is still its parent
        assert conmon.alive(watcher, sleeper)
        init_stat = Path(f"/proc/{meta['pid']}/stat").read_text()
        assert int(init_stat.rsplit(")", 1)[1].split()[1]) == watcher
        assert await rt.exec_sync(sleeper, ["echo", "again"], timeout=10) == (0, b"again\n", b"")

        # remove everything through the daemon
        await rt.stop(sleeper, 1)
        st = await rt.status(sleeper)
        assert (st.state, st.exit_code, st.reason) == ("exited", 137, "Error")  # pid 1 ignores SIGTERM: killed
        await rt.remove(echo)
        await rt.remove(echo)  # removing twice is not an error, as in process
        await rt.remove_sandbox(uid)
        assert await rt.list() == [] and rt.sandbox_uids() == []
    finally:
        # whatever a failure left: remove it in process, on the same directories
        left = await tear_down(d, parent, clients) + leftovers(base, d.runc_root, parent)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"the runtime daemon test left behind: {left}"
