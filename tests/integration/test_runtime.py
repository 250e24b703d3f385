"""The container runtime with real parts: runc containers on overlayfs, cgroup v1 limits, pod
network namespaces made with `ip netns`, images built offline with umoci/skopeo, and a local
registry (Debian's docker-registry) on loopback for the pull path.

Every test removes what it made (containers, mounts, sandbox pins, cgroups, netns, temp dirs)
even when it fails, and the `make_runtime` fixture (behind `runtime`) checks that nothing is
left: no runc container, mount, cgroup or container monitor (conmon)."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from worker.runtime import (ContainerCreateError, ContainerSpec, ImagePullError, ImageStore, Runtime,
                            read_log)
from worker.runtime import busybox, cgroups, conmon, imagecmd

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runc containers need root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("runc", "umoci", "skopeo")),
                       reason="needs runc, umoci and skopeo (apt-get install runc umoci skopeo)"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static"),
]

BUSYBOX = "docker.io/library/busybox:latest"


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """One image store for the module, with the offline busybox image built once."""
    root = tmp_path_factory.mktemp("images")
    asyncio.run(ImageStore(root).build_busybox())
    yield root
    shutil.rmtree(root, ignore_errors=True)


def leftovers(root: Path, runc_root: Path, cgroup_parent: str) -> list[str]:
    """What a runtime test could leave on the host: runc containers, mounts (overlays, shm,
    namespace pins) under its temp dir, its cgroups, and the conmon processes running for it."""
    found = []
    if runc_root.exists():
        out = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True).stdout
        found += [f"runc container {c}" for c in out.split()]
    mountinfo = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {ln.split()[4]}" for ln in mountinfo.splitlines() if str(root) in ln]
    found += [f"cgroup {h / cgroup_parent.strip('/')}" for h in cgroups.hierarchies()
              if (h / cgroup_parent.strip("/")).exists()]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            zombie = ") Z" in (proc / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        if os.path.basename(cmdline.split(b"\0")[0]) == b"conmon" and str(root).encode() in cmdline and not zombie:
            found.append(f"conmon process {proc.name}")
    return found


async def tear_down(rt: Runtime, tmp_path: Path) -> list[str]:
    """Remove every container and sandbox of rt, each on its own so that one failure does not
    keep the rest in place; returns what failed and what is still there."""
    errors = []
    try:
        containers = [st.id for st in await rt.list()]
    except Exception as e:  # noqa: BLE001 - reported below, the sweep goes on
        errors.append(f"listing containers: {e!r}")
        containers = [d.name for d in rt.containers_dir.iterdir()] if rt.containers_dir.exists() else []
    for cid in containers:
        try:
            await rt.remove(cid)
        except Exception as e:  # noqa: BLE001
            errors.append(f"removing container {cid}: {e!r}")
    for uid in rt.sandboxes.list():
        try:
            await rt.remove_sandbox(uid)
        except Exception as e:  # noqa: BLE001
            errors.append(f"removing sandbox {uid}: {e!r}")
    errors += [f"cgroup {d} is busy" for d in cgroups.remove(rt.cgroup_parent)]
    return errors + leftovers(tmp_path, rt.runc.root, rt.cgroup_parent)


@pytest.fixture
async def make_runtime(tmp_path, image_root):
    """Runtimes on the test's temp dirs (one cgroup parent per test); every one of them is torn
    down after the test, pass or fail, and the test fails if anything is left."""
    parent = f"/kubelab-test-{secrets.token_hex(4)}"
    made: list[Runtime] = []

    def make(**kw) -> Runtime:
        rt = Runtime(tmp_path / "node", runc_root=tmp_path / "run" / "runc", images=ImageStore(image_root),
                     cgroup_parent=parent, **kw)
        made.append(rt)
        return rt

    try:
        yield make
    finally:
        left = []
        for rt in made:
            left += await tear_down(rt, tmp_path)
        assert not left, f"runtime test left behind: {sorted(set(left))}"


@pytest.fixture
async def runtime(make_runtime):
    return make_runtime()


@pytest.fixture
def netns():
    """Make pod network namespaces with `ip netns add` (lo up); delete them afterwards."""
    made = []

    def make() -> str:
        name = f"kltest-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return f"/var/run/netns/{name}"

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in made if n in listed], f"network namespaces left: {listed}"


def spec(tmp_path: Path, name: str, command: list[str], *, pod: str = "pod-a", uid: str = "uid-a", **kw) -> ContainerSpec:
    return ContainerSpec(pod_uid=uid, pod_name=pod, namespace="default", container_name=name, image=kw.pop("image", BUSYBOX),
                         command=command, log_path=str(tmp_path / "node" / "pods" / uid / "logs" / name / "0.log"), **kw)


async def wait_for_state(rt: Runtime, cid: str, state: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        st = await rt.status(cid)
        if st.state == state:
            return st
        assert time.monotonic() < deadline, f"container still {st.state} after {timeout}s, wanted {state}"
        await asyncio.sleep(0.1)


async def run_to_exit(rt: Runtime, s: ContainerSpec, timeout: float = 60.0):
    cid = await rt.create(s)
    await rt.start(cid)
    return cid, await wait_for_state(rt, cid, "exited", timeout)


async def wait_for_log(path: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}: {content!r}"
        await asyncio.sleep(0.1)


# ---- images --------------------------------------------------------------------------------

async def test_busybox_image_is_built_offline(image_root):
    store = ImageStore(image_root)
    info = store.get("busybox")
    assert info is not None and info.ref == BUSYBOX and info.digest.startswith("sha256:")
    assert [i.ref for i in store.list()] == [BUSYBOX]
    assert store.config("busybox:latest").cmd == ["sh"]
    rootfs = await store.rootfs("busybox")
    for applet in ("sh", "httpd", "nc", "ls", "cat", "sleep", "hostname", "ip", "mkdir", "ps", "kill"):
        assert os.readlink(rootfs / "bin" / applet) == "busybox"
    # Debian's busybox has no `wget -T`: then wget is the wrapper script that provides it
    wget = rootfs / "bin" / "wget"
    if busybox.wget_has_timeout():
        assert os.readlink(wget) == "busybox"
    else:
        assert wget.read_text() == busybox.WGET_WRAPPER and os.access(wget, os.X_OK)
    assert await store.rootfs(BUSYBOX) == rootfs  # unpacked once per digest


def common_sh_busybox_archive(work: Path) -> Path:
    """The archive shared/checks/lib/common.sh's busybox_archive makes (same umoci/skopeo steps)."""
    out = work / "busybox.tar"

    def sh(*argv):
        subprocess.run(argv, check=True, capture_output=True)

    sh("umoci", "init", "--layout", f"{work}/img")
    sh("umoci", "new", "--image", f"{work}/img:busybox")
    sh("umoci", "unpack", "--image", f"{work}/img:busybox", f"{work}/bb")
    (work / "bb/rootfs/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", work / "bb/rootfs/bin/busybox")
    for a in ("sh", "httpd", "wget", "ls", "cat", "sleep", "echo", "tail", "hostname", "ip", "nc", "mkdir"):
        os.symlink("busybox", work / f"bb/rootfs/bin/{a}")
    sh("umoci", "repack", "--image", f"{work}/img:busybox", f"{work}/bb")
    sh("umoci", "config", "--image", f"{work}/img:busybox", "--config.cmd", "sh")
    sh("skopeo", "copy", "-q", f"oci:{work}/img:busybox", f"oci-archive:{out}:docker.io/library/busybox:latest")
    return out


async def test_import_oci_and_docker_archives(tmp_path, image_root):
    archive = common_sh_busybox_archive(tmp_path / "work")
    store = ImageStore(tmp_path / "store")
    infos = await store.import_archive(archive)
    assert [i.ref for i in infos] == [BUSYBOX]
    assert store.config(BUSYBOX).cmd == ["sh"]

    # a docker-archive (as `docker save` writes) keeps its RepoTags
    docker_tar = tmp_path / "docker.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{image_root / 'images'}:{BUSYBOX}",
                    f"docker-archive:{docker_tar}:example.com/team/tool:1.2"], check=True)
    infos = await store.import_archive(docker_tar)
    assert [i.ref for i in infos] == ["example.com/team/tool:1.2"]
    assert {i.ref for i in store.list()} == {BUSYBOX, "example.com/team/tool:1.2"}

    removed = await store.remove("example.com/team/tool:1.2")
    assert [i.ref for i in removed] == ["example.com/team/tool:1.2"]
    assert store.get("example.com/team/tool:1.2") is None and store.get("busybox") is not None
    # blobs of the removed image are collected; those of the kept one stay
    blobs = {p.name for p in (store.layout / "blobs" / "sha256").iterdir()}
    assert store.get("busybox").digest.removeprefix("sha256:") in blobs
    assert removed[0].digest.removeprefix("sha256:") not in blobs


async def test_image_cli(tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser(prog="kubelab")
    imagecmd.register(parser.add_subparsers(dest="command"), [])
    root = str(tmp_path / "cli")

    async def cli(*argv) -> int:
        args = parser.parse_args(["image", *argv, "--root-dir", root])
        result = args.func(args)
        return await result if asyncio.iscoroutine(result) else result

    assert await cli("build-busybox") == 0
    assert await cli("import", str(common_sh_busybox_archive(tmp_path / "work"))) == 0
    assert "Loaded image: docker.io/library/busybox:latest" in capsys.readouterr().out
    assert await cli("ls") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE"]
    assert lines[1].split()[:2] == ["docker.io/library/busybox", "latest"]
    assert await cli("rm", "busybox") == 0
    assert "Deleted: docker.io/library/busybox:latest" in capsys.readouterr().out
    assert await cli("rm", "busybox") == 1
    assert 'image "busybox" not found' in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry serving on a loopback port, storage in a temp dir."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("needs Debian's docker-registry package (apt-get install docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"""version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {tmp_path / 'registry'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
""")
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "registry.log").read_text()
                assert time.monotonic() < deadline, "registry did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_pull_from_local_registry(tmp_path, image_root, registry, runtime):
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{image_root / 'images'}:{BUSYBOX}",
                    f"docker://{registry}/lab/busybox:1.0"], check=True)
    store = ImageStore(tmp_path / "pulled")
    lines: list[str] = []
    info = await store.pull(f"{registry}/lab/busybox:1.0", progress=lines.append)
    assert info.ref == f"{registry}/lab/busybox:1.0"
    assert info.digest == ImageStore(image_root).get(BUSYBOX).digest  # the same manifest, byte for byte
    assert any("Copying" in ln for ln in lines)
    assert store.config(info.ref).cmd == ["sh"]

    # a container runs from the pulled image
    runtime.images = store
    _, st = await run_to_exit(runtime, spec(tmp_path, "pulled", ["sh", "-c", "echo from-registry"], image=info.ref))
    assert (st.state, st.exit_code) == ("exited", 0)

    with pytest.raises(ImagePullError) as e:
        await store.pull(f"{registry}/lab/nothere:1.0")
    assert "manifest unknown" in e.value.message
    assert store.get(f"{registry}/lab/nothere:1.0") is None


async def test_pull_from_unreachable_registry_fails_with_message(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(ImagePullError) as e:
        await ImageStore(tmp_path).pull(f"127.0.0.1:{port}/x/y")
    assert "connection refused" in e.value.message
    with pytest.raises(ImagePullError, match="invalid reference format"):
        await ImageStore(tmp_path).pull("UPPER/case")


# ---- containers ----------------------------------------------------------------------------

async def test_exit_zero_is_completed_and_logged(tmp_path, runtime):
    s = spec(tmp_path, "echo", ["sh", "-c", "echo hello; echo oops >&2; printf 'no newline'"], env={"GREETING": "hi"})
    cid, st = await run_to_exit(runtime, s)
    assert (st.state, st.exit_code, st.reason) == ("exited", 0, "Completed")
    assert st.started_at and st.finished_at and st.finished_at >= st.started_at
    assert st.image == BUSYBOX and st.name == "echo" and st.pod_uid == "uid-a"
    assert runtime.logs(cid) == Path(s.log_path)
    # conmon reads stdout and stderr from two pipes: the order within a stream is kept, not
    # across them; output without a final newline stays a P (partial) entry, as with CRI-O
    raw = [ln.split(" ", 1)[1] for ln in Path(s.log_path).read_text().splitlines()]
    assert [ln for ln in raw if ln.startswith("stdout")] == ["stdout F hello", "stdout P no newline"]
    assert [ln for ln in raw if ln.startswith("stderr")] == ["stderr F oops"]
    assert sorted([ln async for ln in runtime.read_logs(cid)]) == ["hello", "no newline", "oops"]
    assert [ln async for ln in read_log(Path(s.log_path), tail=1)] == ["no newline"]


async def test_exit_code_is_captured_as_error(tmp_path, runtime):
    _, st = await run_to_exit(runtime, spec(tmp_path, "fail", ["sh", "-c", "exit 3"]))
    assert (st.state, st.exit_code, st.reason) == ("exited", 3, "Error")


async def test_image_env_cmd_and_workdir(tmp_path, runtime):
    host = tmp_path / "data"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    s = spec(tmp_path, "env", [], args=[], env={"FOO": "bar"}, working_dir="/data",
             mounts=[(str(host), "/data", False), (str(host), "/ro", True)])
    s.command, s.args = ["sh", "-c"], ["echo $FOO $PATH; pwd; cat in.txt; hostname; echo out > /data/out.txt; "
                                       "touch /ro/x 2>/dev/null || echo ro-denied"]
    _, st = await run_to_exit(runtime, s)
    assert st.exit_code == 0, Path(s.log_path).read_text()
    lines = [ln async for ln in read_log(Path(s.log_path))]
    assert lines[0].startswith("bar /usr/local/sbin")
    assert lines[1:] == ["/data", "from host", socket.gethostname(), "ro-denied"]
    assert (host / "out.txt").read_text() == "out\n"


async def test_command_not_found_fails_create(tmp_path, runtime, netns):
    with pytest.raises(ContainerCreateError, match="nosuchbinary"):
        await runtime.create(spec(tmp_path, "bad", ["nosuchbinary"], netns_path=netns()))
    assert await runtime.list() == []
    with pytest.raises(ContainerCreateError, match="not present"):
        await runtime.create(spec(tmp_path, "bad", ["sh"], image="nosuch/image:1"))


async def test_memory_limit_oom_killed(tmp_path, runtime):
    s = spec(tmp_path, "hog", ["sh", "-c", "x=$(head -c 200m /dev/zero | tr '\\0' a); echo survived"],
             memory_bytes=32 * 1024 * 1024)
    _, st = await run_to_exit(runtime, s, timeout=60)
    assert st.reason == "OOMKilled", (st, Path(s.log_path).read_text())
    assert st.exit_code == 137


async def test_cpu_and_memory_limits_reach_the_cgroup(tmp_path, runtime):
    cid = await runtime.create(spec(tmp_path, "limited", ["sleep", "1000"], cpu_millis=250, memory_bytes=64 << 20))
    meta = json.loads((runtime.containers_dir / cid / "meta.json").read_text())
    rel = meta["cgroup_path"].lstrip("/")
    if cgroups.is_v2():
        assert (cgroups.CGROUP_ROOT / rel / "cpu.max").read_text().split() == ["25000", "100000"]
    else:
        assert (cgroups.CGROUP_ROOT / "cpu" / rel / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert int((cgroups.CGROUP_ROOT / "memory" / rel / "memory.limit_in_bytes").read_text()) == 64 << 20
    await runtime.remove(cid)
    assert not any((h / rel).exists() for h in cgroups.hierarchies())


async def test_pod_containers_share_network_ipc_uts(tmp_path, runtime, netns):
    ns = netns()
    web = await runtime.create(spec(tmp_path, "web", ["httpd", "-f", "-p", "8080", "-h", "/var/www"], netns_path=ns,
                                    pod="web-7d9f", pod_ip="10.244.0.5"))
    await runtime.start(web)
    client = spec(tmp_path, "client", ["sh", "-c", "i=0; while [ $i -lt 200 ]; do i=$((i+1)); "
                                        "wget -q -O- http://127.0.0.1:8080/ && exit 0; sleep 0.3; done; exit 1"],
                  netns_path=ns, pod="web-7d9f", pod_ip="10.244.0.5")
    _, st = await run_to_exit(runtime, client)
    assert st.exit_code == 0, Path(client.log_path).read_text()
    assert "hello from kubelab busybox" in Path(client.log_path).read_text()

    side = await runtime.create(spec(tmp_path, "side", ["sleep", "1000"], netns_path=ns, pod="web-7d9f"))
    await runtime.start(side)
    outs = []
    for cid in (web, side):
        rc, out, err = await runtime.exec_sync(cid, ["sh", "-c", "hostname; for n in ipc uts net; do readlink /proc/self/ns/$n; done; "
                                                     "grep web-7d9f /etc/hosts"], timeout=10)
        assert rc == 0, err
        outs.append(out.decode().split())
    assert outs[0] == outs[1]
    assert outs[0][0] == "web-7d9f" and outs[0][-2:] == ["10.244.0.5", "web-7d9f"]
    assert outs[0][3] != os.readlink("/proc/self/ns/net")  # the pod's, not the host's
    # a second pod is isolated: other hostname, other IPC namespace
    other = await runtime.create(spec(tmp_path, "o", ["sleep", "1000"], netns_path=netns(), pod="other", uid="uid-b"))
    await runtime.start(other)
    rc, out, _ = await runtime.exec_sync(other, ["sh", "-c", "hostname; readlink /proc/self/ns/ipc"], timeout=10)
    assert out.decode().split()[0] == "other" and out.decode().split()[1] != outs[0][1]

    await runtime.remove_sandbox("uid-a")
    assert [s.pod_uid for s in await runtime.list()] == ["uid-b"]
    assert runtime.sandboxes.list() == ["uid-b"]


async def test_stop_sigterm_then_sigkill(tmp_path, runtime):
    # a pid 1 that traps SIGTERM and carries on: the grace period runs out, then SIGKILL
    stubborn = await runtime.create(spec(tmp_path, "stubborn", ["sh", "-c", "trap 'echo term-ignored' TERM; "
                                                                "echo ready; while true; do sleep 0.1; done"]))
    await runtime.start(stubborn)
    await wait_for_log(runtime.logs(stubborn), "ready")
    t0 = time.monotonic()
    await runtime.stop(stubborn, timeout=1.5)
    waited = time.monotonic() - t0
    st = await runtime.status(stubborn)
    assert (st.state, st.exit_code, st.reason) == ("exited", 137, "Error")
    # SIGTERM came first and was survived (the trap ran), so SIGKILL came after it
    assert [ln async for ln in runtime.read_logs(stubborn)] == ["ready", "term-ignored"]
    # not a speed bar: the runtime's own clock enforces the grace period, load can only lengthen it
    assert waited >= 1.5, waited

    polite = await runtime.create(spec(tmp_path, "polite", ["sh", "-c", "trap 'echo bye; exit 0' TERM; "
                                                            "echo ready; while true; do sleep 0.1; done"]))
    await runtime.start(polite)
    await wait_for_log(runtime.logs(polite), "ready")
    # stop returns when the container exits, not when the grace period ends: with an hour
    # of grace, only an early return gets through the (generous) wait
    await asyncio.wait_for(runtime.stop(polite, timeout=3600), 120)
    st = await runtime.status(polite)
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert [ln async for ln in runtime.read_logs(polite)] == ["ready", "bye"]
    await runtime.stop(polite, timeout=1)  # stopping an exited container is a no-op


async def test_adoption_by_a_new_runtime(tmp_path, runtime, make_runtime):
    s = spec(tmp_path, "long", ["sh", "-c", "echo started; trap 'exit 7' TERM; while true; do sleep 0.1; done"],
             labels={"io.kubernetes.pod.name": "pod-a", "restart": "3"}, attempt=2)
    cid = await runtime.create(s)
    await runtime.start(cid)
    created = await runtime.create(spec(tmp_path, "idle", ["true"]))
    await wait_for_log(runtime.logs(cid), "started")

    # a kubelet restart: a fresh Runtime (and image store object) on the same directories
    again = make_runtime()
    assert (again.root, again.runc.root, again.cgroup_parent) == \
        (runtime.root, runtime.runc.root, runtime.cgroup_parent)
    found = {st.id: st for st in await again.list()}
    assert set(found) == {cid, created}
    assert found[cid].state == "running" and found[cid].labels == s.labels
    assert found[cid].spec.attempt == 2 and found[cid].spec.container_name == "long"
    assert found[created].state == "created"
    await again.stop(cid, timeout=10)
    st = await again.status(cid)
    assert (st.state, st.exit_code) == ("exited", 7)  # captured by the monitor, not by the runtime object
    await again.start(created)
    st = await wait_for_state(again, created, "exited")
    assert st.exit_code == 0


async def test_exec(tmp_path, runtime, netns):
    cid = await runtime.create(spec(tmp_path, "box", ["sleep", "1000"], netns_path=netns(), env={"WHO": "box"}))
    await runtime.start(cid)
    rc, out, err = await runtime.exec_sync(cid, ["sh", "-c", "echo $WHO; hostname; echo err >&2; exit 4"], timeout=10)
    assert (rc, out, err) == (4, b"box\npod-a\n", b"err\n")

    proc = await runtime.exec(cid, ["sh", "-c", "read line; echo got:$line"], stdin=True)
    out, _ = await asyncio.wait_for(proc.communicate(b"ping\n"), 10)
    assert (proc.returncode, out) == (0, b"got:ping\n")

    proc = await runtime.exec(cid, ["sh", "-c", "tty; read line; echo got:$line"], tty=True)
    proc.stdin.write(b"pong\n")
    await proc.stdin.drain()
    out = await asyncio.wait_for(proc.stdout.read(), 10)
    await asyncio.wait_for(proc.wait(), 10)
    proc.stdin.close()
    assert b"/dev/pts/" in out and b"got:pong" in out and proc.returncode == 0


async def test_logs_follow_until_exit(tmp_path, runtime):
    cid = await runtime.create(spec(tmp_path, "ticker", ["sh", "-c", "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done"]))
    await runtime.start(cid)
    lines = await asyncio.wait_for(_collect(runtime.read_logs(cid, follow=True)), 120)
    assert lines == [f"tick {i}" for i in range(1, 6)]
    assert [ln async for ln in runtime.read_logs(cid, tail=2)] == ["tick 4", "tick 5"]


async def _collect(agen) -> list:
    return [x async for x in agen]


async def test_log_rotation_by_size(tmp_path, make_runtime):
    """conmon writes the log; the runtime rotates it at list() (the kubelet's relist), as the
    kubelet's container log manager does with CRI-O: files move along, conmon reopens."""
    rt = make_runtime(log_max_size=4096, log_max_files=3)
    gate = tmp_path / "gate"
    gate.mkdir()
    # four bursts of 100 lines (about 5 KB each, over log_max_size), each when the test says so
    s = spec(tmp_path, "chatty", ["sh", "-c", "for b in 0 1 2 3; do while [ ! -e /gate/$b ]; do sleep 0.05; done; "
                                  "i=0; while [ $i -lt 100 ]; do echo line-$b-$i; i=$((i+1)); done; done"],
             mounts=[(str(gate), "/gate", True)])
    cid = await rt.create(s)
    await rt.start(cid)
    log = Path(s.log_path)
    for b in range(4):
        (gate / str(b)).touch()
        await wait_for_log(log, f"line-{b}-99\n")
        if b == 3:
            break
        await rt.list()
        deadline = time.monotonic() + 30
        while not log.exists():  # conmon has reopened the live file: the next burst goes there
            assert time.monotonic() < deadline, "conmon never reopened the log file"
            await asyncio.sleep(0.05)
    st = await wait_for_state(rt, cid, "exited")
    assert st.exit_code == 0
    await rt.list()  # an exited container's log is not rotated any more
    assert sorted(p.name for p in log.parent.iterdir()) == ["0.log", "0.log.1", "0.log.2"]
    def burst(b: int) -> list[str]:
        return [f"line-{b}-{i}" for i in range(100)]
    # the first burst was dropped (three files at most); each file holds what was written
    # between two rotations, whole and in order
    assert [ln async for ln in read_log(log.with_name("0.log.2"))] == burst(1)
    assert [ln async for ln in read_log(log.with_name("0.log.1"))] == burst(2)
    assert [ln async for ln in rt.read_logs(cid)] == burst(3)
    assert all(log.with_name(f"0.log.{i}").stat().st_size > 4096 for i in (1, 2))  # rotated for outgrowing it


async def test_small_logs_are_not_rotated(tmp_path, make_runtime):
    rt = make_runtime(log_max_size=4096, log_max_files=3)
    cid = await rt.create(spec(tmp_path, "quiet", ["sh", "-c", "echo one; exec sleep 1000"]))
    await rt.start(cid)
    log = await wait_for_log(rt.logs(cid), "one")
    await rt.list()
    assert sorted(p.name for p in rt.logs(cid).parent.iterdir()) == ["0.log"]
    assert rt.logs(cid).read_text() == log


def _proc(pid: int) -> tuple[list[bytes], int]:
    """(argv, parent pid) of a process."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return argv, ppid


async def test_conmon_is_the_containers_monitor(tmp_path, runtime):
    cid = await runtime.create(spec(tmp_path, "watched", ["sh", "-c", "echo up; trap 'exit 5' TERM; "
                                                          "while true; do sleep 0.1; done"]))
    await runtime.start(cid)
    await wait_for_log(runtime.logs(cid), "up")
    cdir = runtime.containers_dir / cid
    meta = json.loads((cdir / "meta.json").read_text())
    _, ppid = _proc(meta["pid"])
    margv, _ = _proc(meta["monitor_pid"])
    # init's parent is conmon (its subreaper), for this very container; no Python in between
    assert ppid == meta["monitor_pid"]
    assert os.path.basename(margv[0]) == b"conmon" and cid.encode() in margv and str(cdir).encode() in margv
    assert int((cdir / "conmon.pid").read_text()) == meta["monitor_pid"]
    assert b"python" not in os.path.basename(margv[0])
    # what `kubelab reset` matches when it sweeps a host without a root dir
    assert conmon.is_kubelab_conmon(Path(f"/proc/{meta['monitor_pid']}/cmdline").read_bytes())
    await runtime.stop(cid, timeout=10)
    st = await runtime.status(cid)
    assert (st.state, st.exit_code, st.reason) == ("exited", 5, "Error")
    # the exit code came from conmon's exit file; the runtime's record adds the OOM count
    assert (cdir / "exits" / cid).read_text() == "5"
    assert json.loads((cdir / "exit.json").read_text())["oom_kills"] == 0
    deadline = time.monotonic() + 30
    while conmon_alive(meta["monitor_pid"]):  # conmon's job ends with its container
        assert time.monotonic() < deadline, "conmon outlived its container"
        await asyncio.sleep(0.05)


def conmon_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


async def test_monitor_death_loses_only_the_exit_code(tmp_path, runtime):
    cid = await runtime.create(spec(tmp_path, "orphan", ["sleep", "1000"]))
    await runtime.start(cid)
    monitor = json.loads((runtime.containers_dir / cid / "meta.json").read_text())["monitor_pid"]
    assert os.path.basename(_proc(monitor)[0][0]) == b"conmon"
    os.kill(monitor, 9)
    deadline = time.monotonic() + 30
    while True:  # gone, or a zombie until init reaps it
        try:
            if Path(f"/proc/{monitor}/stat").read_text().split(") ")[1][0] in "ZX":
                break
        except (OSError, IndexError):
            break
        assert time.monotonic() < deadline, f"monitor {monitor} survived SIGKILL"
        await asyncio.sleep(0.05)
    assert (await runtime.status(cid)).state == "running"  # the container does not depend on it
    await runtime.stop(cid, timeout=0)
    st = await runtime.status(cid)
    assert (st.state, st.exit_code, st.reason) == ("exited", 255, "Error")
    assert "monitor" in st.message


async def test_a_log_that_cannot_rotate_does_not_fail_the_relist(tmp_path, make_runtime):
    rt = make_runtime(log_max_size=16, log_max_files=2)
    cid = await rt.create(spec(tmp_path, "stuck", ["sh", "-c", "echo more than sixteen bytes; exec sleep 1000"]))
    await rt.start(cid)
    await wait_for_log(rt.logs(cid), "sixteen")
    rt.logs(cid).with_name("0.log.1").mkdir()  # rotating onto a directory fails
    assert [st.state for st in await rt.list()] == ["running"]
    assert rt.logs(cid).exists()  # left as it was
    rt.logs(cid).with_name("0.log.1").rmdir()
    await rt.list()  # and rotated once the way is clear
    assert rt.logs(cid).with_name("0.log.1").is_file()
