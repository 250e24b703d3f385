"""The OCI runtime spec the runtime gives runc: Kubernetes' command/args rules, env merging,
image users, namespaces of the pod sandbox, limits."""
from pathlib import Path

import pytest

from worker.runtime.bundle import (Shared, SpecError, process_args, process_env, resolve_user,
                                   runtime_spec)
from worker.runtime.images import ImageConfig

IMAGE = ImageConfig(entrypoint=["/entry"], cmd=["serve", "--port=80"], env={"PATH": "/bin", "A": "1"})


@pytest.mark.parametrize("command,args,want", [
    ([], [], ["/entry", "serve", "--port=80"]),
    ([], ["x"], ["/entry", "x"]),
    (["sh"], [], ["sh"]),
    (["sh", "-c"], ["echo hi"], ["sh", "-c", "echo hi"]),
])
def test_command_and_args_follow_kubernetes(command, args, want):
    assert process_args(IMAGE, command, args) == want


def test_no_command_at_all():
    with pytest.raises(SpecError, match="no command specified"):
        process_args(ImageConfig(), [], [])


def test_env_merges_over_the_image():
    env = process_env(IMAGE, {"A": "2", "B": "3"}, "web")
    assert env == ["PATH=/bin", "HOSTNAME=web", "A=2", "B=3"]


def test_users_from_the_image_rootfs(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:\n")
    assert resolve_user("", tmp_path) == (0, 0)
    assert resolve_user("www", tmp_path) == (33, 34)
    assert resolve_user("33", tmp_path) == (33, 34)
    assert resolve_user("1000:1000", tmp_path) == (1000, 1000)
    assert resolve_user("www:staff", tmp_path) == (33, 50)
    with pytest.raises(SpecError, match="unable to find user nobody"):
        resolve_user("nobody", tmp_path)


def _spec(**kw):
    shared = Shared(ipc_path=Path("/run/sb/ipc"), uts_path=kw.pop("uts", Path("/run/sb/uts")),
                    netns_path=kw.pop("netns", "/var/run/netns/pod"), shm_dir=Path("/run/sb/shm"),
                    etc_files={"/etc/hosts": Path("/run/sb/hosts")})
    return runtime_spec(args=["sh"], env=["PATH=/bin"], cwd="", uid=0, gid=0, rootfs=Path("/c/rootfs"), shared=shared,
                        mounts=kw.pop("mounts", []), cgroups_path="/kubelab/uid/cid", **kw)


def test_pod_namespaces_are_joined():
    s = _spec()
    ns = {n["type"]: n.get("path") for n in s["linux"]["namespaces"]}
    assert ns == {"pid": None, "mount": None, "ipc": "/run/sb/ipc", "uts": "/run/sb/uts",
                  "network": "/var/run/netns/pod"}
    assert s["process"]["cwd"] == "/" and s["root"]["path"] == "/c/rootfs"
    dests = [m["destination"] for m in s["mounts"]]
    assert {"/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/etc/hosts"} <= set(dests)
    assert next(m for m in s["mounts"] if m["destination"] == "/dev/shm")["source"] == "/run/sb/shm"


def test_host_network_uses_host_namespaces():
    s = _spec(netns=None, uts=None)
    assert {n["type"] for n in s["linux"]["namespaces"]} == {"pid", "mount", "ipc"}
    assert next(m for m in s["mounts"] if m["destination"] == "/sys")["type"] == "bind"


def test_limits_and_bind_mounts():
    s = _spec(memory_bytes=64 << 20, cpu_millis=250, mounts=[("/host/a", "/a", True), ("/host/b", "/b", False)])
    r = s["linux"]["resources"]
    assert r["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert r["cpu"] == {"shares": 256, "quota": 25000, "period": 100000}
    binds = {m["destination"]: m for m in s["mounts"] if m["destination"] in ("/a", "/b")}
    assert "ro" in binds["/a"]["options"] and "rw" in binds["/b"]["options"]
    assert s["linux"]["cgroupsPath"] == "/kubelab/uid/cid"
    assert "memory" not in _spec()["linux"]["resources"]


def test_privileged_drops_masks():
    s = _spec(privileged=True)
    assert "maskedPaths" not in s["linux"] and "CAP_SYS_ADMIN" in s["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in _spec()["process"]["capabilities"]["bounding"]
