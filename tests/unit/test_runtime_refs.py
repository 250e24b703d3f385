"""Image reference normalization, as `docker pull` and the kubelet spell images."""
import pytest

from worker.runtime.refs import InvalidReference, is_loopback_registry, normalize, parse, split

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref,want", [
    ("nginx", "docker.io/library/nginx:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
    ("docker.io/nginx", "docker.io/library/nginx:latest"),
    ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
    ("myreg:5000/x/y", "myreg:5000/x/y:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/lab/busybox:1.0", "127.0.0.1:5000/lab/busybox:1.0"),
    ("quay.io/coreos/etcd:v3.5.1", "quay.io/coreos/etcd:v3.5.1"),
    (f"nginx@{DIGEST}", f"docker.io/library/nginx@{DIGEST}"),
    (f"nginx:1.25@{DIGEST}", f"docker.io/library/nginx:1.25@{DIGEST}"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
])
def test_normalize(ref, want):
    assert normalize(ref) == want
    assert normalize(want) == want  # idempotent


@pytest.mark.parametrize("bad", ["", "  ", "Nginx", "nginx:", "nginx:bad tag", "a//b", "nginx@sha256:short", "-x"])
def test_invalid(bad):
    with pytest.raises(InvalidReference, match="invalid reference format"):
        normalize(bad)


def test_parts_and_columns():
    r = parse("myreg:5000/x/y:2")
    assert (r.domain, r.path, r.tag, r.digest, r.repository) == ("myreg:5000", "x/y", "2", "", "myreg:5000/x/y")
    assert split("busybox") == ("docker.io/library/busybox", "latest")
    assert split(f"x.io/a@{DIGEST}") == ("x.io/a", DIGEST)


def test_loopback_registries():
    assert is_loopback_registry("127.0.0.1:5000") and is_loopback_registry("localhost:5000")
    assert is_loopback_registry("[::1]:5000") and is_loopback_registry("localhost")
    assert not is_loopback_registry("docker.io") and not is_loopback_registry("10.0.0.1:5000")
