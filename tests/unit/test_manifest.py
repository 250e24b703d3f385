import pytest

from kubelab.cli.common import CLIError
from kubelab.cli.manifest import parse_doc
from kubelab.cli.printers import age, dump, pod_status
import datetime as dt


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
       "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],
                                "resources": {"requests": {"cpu": 1, "memory": 128974848}, "limits": {"cpu": 0.5}},
                                "livenessProbe": {"httpGet": {"path": "/", "port": 80}}}],
                "volumes": [{"name": "logs", "emptyDir": {}}]}}


def test_pod_manifest_maps_one_to_one():
    p = parse_doc(POD, "f.yaml", 1, "dev")
    assert p.metadata.namespace == "dev"
    c = p.spec.containers[0]
    assert c.resources.requests["cpu"] == "1" and c.resources.requests["memory"] == "128974848"
    assert c.resources.limits["cpu"] == "0.5"
    assert c.livenessProbe.httpGet.port.number_value == 80
    assert p.spec.volumes[0].HasField("emptyDir")


def test_unknown_field_is_named():
    bad = {**POD, "spec": {"containers": [{"name": "c", "imagee": "nginx"}]}}
    with pytest.raises(CLIError) as e:
        parse_doc(bad, "f.yaml", 2)
    assert str(e.value) == ('error parsing f.yaml (document 2): Pod in version "v1" cannot be handled as a Pod: '
                            'strict decoding error: unknown field "spec.containers[0].imagee"')


def test_unknown_kind():
    with pytest.raises(CLIError, match='no matches for kind "Deployment" in version "apps/v1"'):
        parse_doc({"apiVersion": "apps/v1", "kind": "Deployment"}, "f.yaml", 1)


def test_roundtrip_yaml_has_kubernetes_shape():
    p = parse_doc(POD, "f.yaml", 1, "dev")
    out = dump([p], "yaml", single=True)
    assert out.startswith("apiVersion: v1\nkind: Pod\nmetadata:")
    assert "containerPort: 80" in out
    assert dump([p], "name", single=True) == "pod/web"


def test_age_like_kubectl():
    now = dt.datetime(2026, 1, 10, tzinfo=dt.timezone.utc)
    ts = lambda **kw: (now - dt.timedelta(**kw)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    assert age(ts(seconds=5), now) == "5s"
    assert age(ts(minutes=3, seconds=2), now) == "3m2s"
    assert age(ts(minutes=12), now) == "12m"
    assert age(ts(hours=5), now) == "5h"
    assert age(ts(days=3), now) == "3d"


def test_pod_status_column():
    p = parse_doc(POD, "f.yaml", 1)
    p.status.phase = "Running"
    cs = p.status.containerStatuses.add(name="c")
    cs.state.waiting.reason = "CrashLoopBackOff"
    assert pod_status(p) == "CrashLoopBackOff"
    cs.state.Clear()
    cs.state.terminated.exitCode = 0
    cs.state.terminated.reason = "Completed"
    assert pod_status(p) == "Completed"
    p.metadata.deletionTimestamp = "2026-01-01T00:00:00Z"
    assert pod_status(p) == "Terminating"
