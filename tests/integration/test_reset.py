"""`kubelab reset --all` (worker/kubelet/reset.py): the node half of kubeadm reset plus a sweep
of the whole host for what kubelab left there, found by its marks (processes in kubelab's
cgroups and container monitors, container and sandbox mounts, kl-* network namespaces, the
bridge and its KUBELAB-* rules).

A host-wide sweep must never run on the host of a test: other engineers, other tests and the
test session itself run kubelab containers there. So the real CLI runs confined, in new PID,
mount and network namespaces (`unshare --pid --fork --mount-proc --mount --net`), where each
place the sweep looks holds only what this test made:

- /proc is the new PID namespace's, so only the test's processes can be seen or signalled;
- /run/netns is a private tmpfs, so the host's namespaces are not even visible;
- mounts are private copies, so an unmount changes nothing outside;
- the bridge, links and iptables rules live in the new network namespace;
- /sys/fs/cgroup is a private tmpfs whose `<hierarchy>/kubelab` directories are bind mounts
  of this test's own cgroup parent, `kubelab-test-<random>`: the sweep reads and removes real
  cgroups, but only the test's. (The host's /sys/fs/cgroup/*/kubelab would list other
  people's containers, as pid 0 in the cgroup v2 hierarchy when seen from a PID namespace.)

Inside, the driver (this module run as a program) makes a pod the way the kubelet does (a
pod network on cni0, a runc container with its monitor, sandbox pins and overlay), next to
decoys that are not kubelab's (a process, a netns, a mount, a link, iptables rules), runs
`kubelab reset --all` (or plain `kubelab reset --root-dir`, next to another root's running
container), and reports what it saw before and after. It refuses to start unless its PID,
mount and network namespaces differ from the host's. When the driver exits the namespaces
die with everything in them, so nothing outlives the test even when it fails; the host-side
fixture removes the test's cgroups and checks that nothing reached the host.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .test_runtime import image_root  # noqa: F401 - the module's busybox image store

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "docker.io/library/busybox:latest"
CGROUP_ROOT = Path("/sys/fs/cgroup")
POD_CIDR = "10.244.7.0/24"
DECOY_RULE = "decoy-not-kubelab"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, runc containers and iptables need root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("runc", "umoci", "skopeo", "unshare", "iptables-save")),
                       reason="needs runc, umoci, skopeo, util-linux unshare and iptables"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static"),
]


# ---- inside the namespaces -----------------------------------------------------------------

def sh(*argv: str) -> str:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def dead(pid: int) -> bool:
    """Gone, or a zombie of the namespace's init (the driver does not reap strangers)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] in "ZX"
    except (OSError, IndexError):
        return True


def snapshot(tmp: Path, pids: dict[str, int], cgview: Path | None) -> dict:
    links = {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show"))}
    mounted = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
    runc_roots = sorted(tmp.glob("*/runc"))
    return {
        "alive": sorted(name for name, pid in pids.items() if not dead(pid)),
        "mounts": sorted(m.removeprefix(str(tmp)) for m in mounted
                         if m.startswith(str(tmp)) and not (cgview and m.startswith(str(cgview)))),
        "netns": sorted(os.listdir("/run/netns")),
        "links": sorted(links),
        "iptables": sh("iptables-save").splitlines(),
        "cgroups": sorted({str(d.relative_to(h)) for h in cgview.iterdir() for d in h.rglob("*") if d.is_dir()})
        if cgview else [],
        "runc": {r.parent.name: sh("runc", "--root", str(r), "list", "-q").split() for r in runc_roots},
    }


def cgroup_mounts(*, fstypes=("cgroup", "cgroup2")) -> list[Path]:
    """Hierarchies the sweep looks at: /sys/fs/cgroup/<controller> (v1 and hybrid) or
    /sys/fs/cgroup itself (pure v2)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        mountpoint = Path(pre.split(" ")[4])
        if post.split(" ", 1)[0] in fstypes and CGROUP_ROOT in (mountpoint, mountpoint.parent):
            found.append(mountpoint)
    return found


def private_cgroup_view(parent: str, cgview: Path) -> None:
    """Make /sys/fs/cgroup[/<hierarchy>]/kubelab (what the sweep reads) this test's own parent."""
    staged = []
    for mountpoint in cgroup_mounts():
        if (mountpoint / parent).is_dir():
            rel = mountpoint.relative_to(CGROUP_ROOT)
            stage = cgview / (rel.name or "unified-root")
            stage.mkdir(parents=True)
            sh("mount", "--bind", str(mountpoint / parent), str(stage))
            staged.append((stage, CGROUP_ROOT / rel / "kubelab"))
    assert staged, f"no cgroup hierarchy holds {parent}"
    sh("mount", "-t", "tmpfs", "cgroup-view", str(CGROUP_ROOT))
    for stage, target in staged:
        target.mkdir(parents=True)
        sh("mount", "--bind", str(stage), str(target))


async def pod_on_a_node(root: Path, images: Path, parent: str, *, host_network: bool = False) -> dict:
    """What a kubelet leaves on a node with kubelab's layout under root (runc state, sandboxes,
    pod network state): a running runc container with its monitor, sandbox pins and overlay, on
    a pod network of bridge cni0 unless host_network."""
    from worker.network import PodNetwork
    from worker.runtime import ContainerSpec, ImageStore, Runtime
    uid = str(uuid.uuid4())
    pod = None
    if not host_network:
        net = PodNetwork(root / "network", bridge="cni0")
        await net.ensure_bridge(POD_CIDR)
        pod = await net.setup_pod(uid, "web", "default")
    rt = Runtime(root, runc_root=root / "runc", images=ImageStore(images), cgroup_parent=parent)
    cid = await rt.create(ContainerSpec(pod_uid=uid, pod_name="web", namespace="default", container_name="web",
                                        image=BUSYBOX, command=["sleep", "1000"],
                                        netns_path=str(pod.netns_path) if pod else None,
                                        pod_ip=pod.ip if pod else None, log_path=str(root / "web.log")))
    await rt.start(cid)
    meta = json.loads((rt.containers_dir / cid / "meta.json").read_text())
    return {"uid": uid, "cid": cid, "pid": meta["pid"], "monitor": meta["monitor_pid"],
            "veth": pod.host_veth if pod else None, "netns": pod.netns_name if pod else None}


def decoys(tmp: Path) -> int:
    """Things that look a little like kubelab's but are not; returns the decoy process's pid."""
    decoy = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    sh("ip", "netns", "add", "decoy-ns")
    decoy_mount = tmp / "decoy" / "containers" / "not-a-container-id" / "rootfs"
    decoy_mount.mkdir(parents=True)
    sh("mount", "-t", "tmpfs", "decoy", str(decoy_mount))
    sh("ip", "link", "add", "decoy0", "type", "bridge")  # a bridge, but not the node's
    sh("iptables", "-w", "-A", "FORWARD", "-m", "comment", "--comment", DECOY_RULE, "-j", "ACCEPT")
    sh("iptables", "-w", "-t", "nat", "-N", "KUBE-DECOY")  # kube-proxy's, not kubelab's
    return decoy.pid


async def confined(tmp: Path, images: Path, parent: str, mode: str) -> dict:
    Path("/run/netns").mkdir(exist_ok=True)  # iproute2 makes it on first use anyway
    sh("mount", "-t", "tmpfs", "netns", "/run/netns")
    pod = await pod_on_a_node(tmp / "node", images, parent)
    pids = {"container": pod["pid"], "monitor": pod["monitor"]}
    cgview = None
    if mode == "sweep":
        # a runtime with another cgroup parent: only its monitor marks its container as kubelab's
        other = await pod_on_a_node(tmp / "other-node", images, f"{parent}-other", host_network=True)
        pids["other-monitor"] = other["monitor"]
        gone = set(pids)
        cgview = tmp / "cgview"
        private_cgroup_view(parent, cgview)
        # the root dir is gone, as when a node's directory was deleted while its containers ran
        argv = ["reset", "--all", "--root-dir", str(tmp / "deleted-root")]
    else:
        other = await pod_on_a_node(tmp / "other-node", images, parent, host_network=True)
        pids.update({"other-container": other["pid"], "other-monitor": other["monitor"]})
        gone = {"container", "monitor"}
        argv = ["reset", "--root-dir", str(tmp / "node")]
    pids["decoy"] = decoys(tmp)
    before = snapshot(tmp, pids, cgview)
    reset = subprocess.run([sys.executable, "-m", "kubelab.cli.main", *argv],
                           capture_output=True, text=True, timeout=180, start_new_session=True)
    # SIGKILL takes effect asynchronously and a netns (with the pod's veth) is freed after its
    # last user: wait for the state to settle, then report it whatever it is
    deadline = time.monotonic() + (60 if reset.returncode == 0 else 0)
    while True:
        after = snapshot(tmp, pids, cgview)
        settled = not set(after["alive"]) & gone and not [ln for ln in after["links"] if ln.startswith("veth")]
        if settled or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    return {"pod": pod, "other": other, "rc": reset.returncode, "stdout": reset.stdout, "stderr": reset.stderr,
            "before": before, "after": after}


def main() -> None:
    args = json.loads(sys.argv[1])
    assert os.getpid() == 1, "the driver must run as init of its own PID namespace"
    for ns, host in args["host_namespaces"].items():  # a sweep must never see the host's
        assert os.readlink(f"/proc/self/ns/{ns}") != host, f"the driver shares the host's {ns} namespace"
    result = asyncio.run(confined(Path(args["tmp"]), Path(args["images"]), args["parent"], args["mode"]))
    print(json.dumps(result))


# ---- on the host ---------------------------------------------------------------------------

@pytest.fixture
def cgroup_parent():
    """This test's own cgroup parents (`<parent>` and `<parent>-other`); removed afterwards (the
    namespaces' death kills their tasks)."""
    from worker.runtime import cgroups
    parent = f"kubelab-test-{secrets.token_hex(4)}"
    yield parent
    for p in (parent, f"{parent}-other"):
        assert cgroups.remove(p) == [], f"cgroups of {p} are still busy"
        assert not [h for h in cgroups.hierarchies() if (h / p).exists()]


def run_confined(tmp: Path, images: Path, parent: str, mode: str = "sweep") -> dict:
    """Run the driver (this module) in new PID, mount and network namespaces; its report."""
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--propagation", "private",
            "--net", sys.executable, "-m", "tests.integration.test_reset",
            json.dumps({"tmp": str(tmp), "images": str(images), "parent": parent, "mode": mode,
                        "host_namespaces": {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "mnt", "net")}})]
    # a session of its own: on a timeout the whole group goes, and no signal of the sweep can
    # reach this process's group
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"confined reset did not finish in 300s: {err[-3000:]}")
    assert proc.returncode == 0, f"confined driver failed (rc {proc.returncode}): {err[-5000:]}"
    return json.loads(out.splitlines()[-1])


DECOY_MOUNT = "/decoy/containers/not-a-container-id/rootfs"


def kubelab_rules(lines: list[str]) -> list[str]:
    return [ln for ln in lines if "KUBELAB" in ln or "kubelab:" in ln]


def pod_mounts(node: str, pod: dict) -> list[str]:
    """The container's overlay root and the sandbox's pins and shm, relative to the test's tmp dir."""
    return [f"/{node}/containers/{pod['cid']}/rootfs"] + \
        [f"/{node}/sandboxes/{pod['uid']}/{name}" for name in ("ipc", "uts", "shm") if name != "uts" or pod["netns"]]


def assert_pod_network_was_there_and_is_gone(r: dict) -> None:
    pod, before, after = r["pod"], r["before"], r["after"]
    assert pod["netns"] in before["netns"] and {"cni0", pod["veth"]} <= set(before["links"])
    assert any("kubelab:cni0" in ln for ln in before["iptables"]), before["iptables"]
    assert pod["netns"] not in after["netns"]
    assert not {"cni0", pod["veth"]} & set(after["links"]), after["links"]
    assert kubelab_rules(after["iptables"]) == [], after["iptables"]


def assert_decoys_were_there_and_stay(r: dict) -> None:
    for state in (r["before"], r["after"]):
        assert "decoy" in state["alive"]
        assert DECOY_MOUNT in state["mounts"]
        assert "decoy-ns" in state["netns"]
        assert "decoy0" in state["links"]
        assert any(DECOY_RULE in ln for ln in state["iptables"]), state["iptables"]
        assert ":KUBE-DECOY - [0:0]" in state["iptables"], state["iptables"]


def assert_nothing_reached_the_host(tmp_path: Path, r: dict) -> None:
    # the mounts and namespaces died with the test's namespaces
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    assert not re.search(rf"^({re.escape(r['pod']['netns'])}|decoy-ns)\b", sh("ip", "netns", "list"), re.M)


def test_reset_all_sweeps_kubelab_leftovers_and_spares_the_rest(tmp_path, image_root, cgroup_parent):
    r = run_confined(tmp_path, image_root, cgroup_parent, "sweep")
    pod, other, before, after = r["pod"], r["other"], r["before"], r["after"]
    mounts = pod_mounts("node", pod) + pod_mounts("other-node", other)
    pod_cgroups = [pod["uid"], f"{pod['uid']}/{pod['cid']}"]

    # what the sweep is meant to find really was there (the test cannot pass on an empty host)
    assert before["alive"] == ["container", "decoy", "monitor", "other-monitor"]
    assert set(mounts) <= set(before["mounts"]), before["mounts"]
    assert set(pod_cgroups) <= set(before["cgroups"]), before["cgroups"]

    assert r["rc"] == 0, r["stderr"]
    assert "host sweep: killed" in r["stdout"], r["stdout"]
    # kubelab's: gone, found by their marks alone (the root dir given does not exist)
    # (the other runtime's container is not tracked: outside kubelab's cgroups the sweep finds
    # only its monitor, and the container dies with the test's PID namespace)
    assert after["alive"] == ["decoy"], after
    assert not set(mounts) & set(after["mounts"]), after["mounts"]
    assert after["cgroups"] == [], after["cgroups"]
    assert_pod_network_was_there_and_is_gone(r)
    assert_decoys_were_there_and_stay(r)
    assert_nothing_reached_the_host(tmp_path, r)


def test_reset_removes_the_nodes_containers_sandboxes_and_network_only(tmp_path, image_root, cgroup_parent):
    """`kubelab reset --root-dir` without --all: by the root dir, not by marks. Another root's
    container, running meanwhile, is not the node's and stays."""
    r = run_confined(tmp_path, image_root, cgroup_parent, "node")
    pod, other, before, after = r["pod"], r["other"], r["before"], r["after"]
    assert before["alive"] == ["container", "decoy", "monitor", "other-container", "other-monitor"]
    assert set(pod_mounts("node", pod) + pod_mounts("other-node", other)) <= set(before["mounts"]), before["mounts"]
    assert (before["runc"]["node"], before["runc"]["other-node"]) == ([pod["cid"]], [other["cid"]])

    assert r["rc"] == 0, r["stderr"]
    assert r["stdout"].startswith("removed 1 containers"), r["stdout"]
    assert after["alive"] == ["decoy", "other-container", "other-monitor"], after
    assert not set(pod_mounts("node", pod)) & set(after["mounts"]), after["mounts"]
    assert after["runc"]["node"] == []
    assert not (tmp_path / "node" / "sandboxes" / pod["uid"]).exists()
    # the other root: untouched
    assert set(pod_mounts("other-node", other)) <= set(after["mounts"]), after["mounts"]
    assert after["runc"]["other-node"] == [other["cid"]]
    assert_pod_network_was_there_and_is_gone(r)
    assert_decoys_were_there_and_stay(r)
    assert_nothing_reached_the_host(tmp_path, r)


def test_reset_all_in_a_pid_namespace_never_signals_pid_0(tmp_path, image_root, cgroup_parent):
    """A sweep run inside a PID namespace (a lab VM, this test) sees the cgroup v2 tasks of
    other namespaces as pid 0; it must skip them, not signal its own process group."""
    v2 = cgroup_mounts(fstypes=("cgroup2",))
    if not v2:
        pytest.skip("needs a cgroup v2 hierarchy (v1 leaves other namespaces' tasks out of cgroup.procs)")
    stray_cgroup = v2[0] / cgroup_parent / "stray"
    stray_cgroup.mkdir(parents=True)
    stray = subprocess.Popen(["sleep", "1000"])  # on the host, so outside the sweep's PID namespace
    try:
        (stray_cgroup / "cgroup.procs").write_text(str(stray.pid))
        r = run_confined(tmp_path, image_root, cgroup_parent)
        assert stray.poll() is None  # a task it cannot see is not its to kill
        assert r["rc"] == 0, f"reset --all died with {r['rc']}: {r['stderr'][-2000:]}"
        assert "host sweep: killed" in r["stdout"], r["stdout"]
    finally:
        stray.kill()
        stray.wait()


if __name__ == "__main__":
    main()
