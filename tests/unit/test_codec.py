"""kubelab/api/codec.py's one-pass decode and encode: bytes as base64, IntOrString as written,
zero values with presence kept, empty messages set, int64 as numbers, Go's always-written
zero values on request, and a bad base64 field named."""
import pytest

from kubelab.api import codec, kinds


def test_pod_round_trip():
    body = {"metadata": {"name": "p", "labels": {"a": "b"}, "deletionGracePeriodSeconds": 0},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {}, "ports": [{"containerPort": 80}],
                                     "livenessProbe": {"httpGet": {"port": "http", "path": "/"}},
                                     "readinessProbe": {"tcpSocket": {"port": 8080}}}],
                     "terminationGracePeriodSeconds": 30},
            "status": {"containerStatuses": [{"name": "c", "image": "i"}]}}
    pod = codec.decode(body, kinds.BY_RESOURCE["pods"])
    assert pod.metadata.HasField("deletionGracePeriodSeconds") and pod.spec.containers[0].HasField("resources")
    out = codec.to_dict(pod)
    assert out == {"apiVersion": "v1", "kind": "Pod", **body}
    assert isinstance(out["spec"]["terminationGracePeriodSeconds"], int)
    assert codec.to_dict(pod, go_defaults=True)["status"]["containerStatuses"] == [
        {"name": "c", "image": "i", "imageID": "", "ready": False, "restartCount": 0}]


def test_bytes_fields():
    s = codec.decode({"metadata": {"name": "s"}, "data": {"k": "aGk", "u": "-_8="}}, kinds.BY_RESOURCE["secrets"])
    assert dict(s.data) == {"k": b"hi", "u": b"\xfb\xff"}  # padding optional, URL-safe read too
    assert codec.to_dict(s)["data"] == {"k": "aGk=", "u": "+/8="}
    with pytest.raises(ValueError, match=r"^data\.k: illegal base64 data$"):
        codec.decode({"data": {"k": "!!"}}, kinds.BY_RESOURCE["secrets"])
