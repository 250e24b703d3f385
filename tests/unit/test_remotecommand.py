"""The remote-command WebSocket protocol's pure parts (master/apiserver/rest/remotecommand.py)
and the pods/log and pods/eviction request decoding (rest/streams.py), and the kubelet's log
time formatting: query options with Kubernetes' wording, frames, the final Status."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from multidict import MultiDict

from kubelab.api.v1 import api_pb2
from kubelab.errors import BadRequest, Invalid
from master.apiserver.rest import remotecommand as rc
from master.apiserver.rest.streams import eviction_delete, logs_request
from worker.kubelet.server import log_since, log_time, rfc3339nano


def test_options_from_the_query():
    q = MultiDict([("command", "sh"), ("command", "-c"), ("command", "echo hi"), ("container", "c"),
                   ("stdin", "true"), ("stdout", "1"), ("stderr", "false")])
    assert rc.parse_options(q) == rc.Options("c", ("sh", "-c", "echo hi"), True, True, False, False)
    # a terminal has one output stream: stderr is dropped, as Kubernetes does
    assert rc.parse_options(MultiDict(command="sh", tty="true")).stderr is False
    assert rc.parse_options(MultiDict(), attach=True).command == ()


@pytest.mark.parametrize("query, message", [
    (MultiDict(stdout="true"), "you must specify at least one command for the container"),
    (MultiDict(command="x", stdout="false", stderr="false"), "you must specify at least 1 of stdin, stdout, stderr"),
    (MultiDict(command="x", stdin="yes"), 'stdin: invalid boolean value "yes"'),
])
def test_bad_options(query, message):
    with pytest.raises(BadRequest) as e:
        rc.parse_options(query)
    assert message in e.value.message


def test_protocol_negotiation_takes_the_clients_first_served_offer():
    assert rc.select_protocol("v5.channel.k8s.io") == rc.V5
    assert rc.select_protocol("v4.channel.k8s.io, v5.channel.k8s.io") == rc.V4
    assert rc.select_protocol("channel.k8s.io, base64.channel.k8s.io") is None


def test_frames():
    assert rc.frame(rc.STDOUT, b"hi") == b"\x01hi"
    assert rc.decode(b"\x00abc", rc.V5) == rc.Message(0, b"abc")
    assert rc.decode("\x00typed", rc.V4) == rc.Message(0, b"typed")  # the Python client's text frames
    assert rc.decode(b"\xff\x00", rc.V5) == rc.Message(0, closed=True)
    assert rc.decode(b"\xff\x00", rc.V4) == rc.Message(255, b"\x00")  # v4 has no close signal
    assert rc.decode(b"", rc.V5) is None
    with pytest.raises(BadRequest):
        rc.decode(b"\xff", rc.V5)


def test_exit_status():
    assert json.loads(rc.exit_status(0, ["true"])) == {"metadata": {}, "status": "Success"}
    s = json.loads(rc.exit_status(3, ("sh", "-c", "exit 3")))
    assert s["status"] == "Failure" and s["reason"] == "NonZeroExitCode"
    assert s["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert s["message"] == "command terminated with non-zero exit code: command 'sh -c exit 3' exited with 3: "


def test_log_options():
    req = logs_request("ns", "p", MultiDict(container="c", follow="true", tailLines="5", limitBytes="10",
                                            timestamps="1", sinceSeconds="60"))
    assert (req.container, req.follow, req.tailLines, req.limitBytes, req.timestamps, req.sinceSeconds) == \
        ("c", True, 5, 10, True, 60)
    assert not logs_request("ns", "p", MultiDict()).HasField("tailLines")
    with pytest.raises(Invalid) as e:
        logs_request("ns", "p", MultiDict(tailLines="-1"))
    assert e.value.message == 'PodLogOptions "p" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0'
    with pytest.raises(Invalid) as e:
        logs_request("ns", "p", MultiDict(limitBytes="0"))
    assert "limitBytes: Invalid value: 0: must be greater than 0" in e.value.message
    with pytest.raises(BadRequest) as e:
        logs_request("ns", "p", MultiDict(tailLines="x"))
    assert 'tailLines: invalid value "x"' in e.value.message
    with pytest.raises(Invalid):
        logs_request("ns", "p", MultiDict(sinceSeconds="5", sinceTime="2024-01-01T00:00:00Z"))


def test_eviction_becomes_the_pods_delete():
    req = eviction_delete({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"},
                           "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "u1"},
                                             "propagationPolicy": "Background", "dryRun": ["All"]}}, "ns", "p")
    assert (req.resource, req.namespace, req.name, req.gracePeriodSeconds, req.preconditionUid,
            req.propagationPolicy, req.dryRun) == ("pods", "ns", "p", 0, "u1", "Background", True)
    assert not eviction_delete({"metadata": {"name": "p"}}, "ns", "p").HasField("gracePeriodSeconds")


@pytest.mark.parametrize("body, message", [
    ({"metadata": {"name": "q"}}, "name in URL does not match name in Eviction object"),
    ({"metadata": {"name": "p", "namespace": "other"}}, "does not match the namespace sent on the request"),
    ({"spec": {}}, 'unknown field "spec"'),
    ({"deleteOptions": {"grace": 1}}, 'unknown field "deleteOptions.grace"'),
    ({"kind": "Pod"}, "the kind in the data (Pod) does not match the expected kind (Eviction)"),
    ({"deleteOptions": {"gracePeriodSeconds": "5"}}, "gracePeriodSeconds: an integer was expected"),
])
def test_bad_evictions(body, message):
    with pytest.raises(BadRequest) as e:
        eviction_delete(body, "ns", "p")
    assert message in e.value.message


def test_bad_eviction_policy():
    with pytest.raises(Invalid) as e:
        eviction_delete({"deleteOptions": {"propagationPolicy": "Sometimes"}}, "ns", "p")
    assert 'propagationPolicy: Unsupported value: "Sometimes"' in e.value.message


def test_kubelet_log_times():
    assert rfc3339nano("2024-05-01T12:00:00.123456700+00:00") == "2024-05-01T12:00:00.1234567Z"
    assert rfc3339nano("2024-05-01T12:00:00.000000000+00:00") == "2024-05-01T12:00:00Z"
    assert log_time("2024-05-01T12:00:00.123456789+00:00") == datetime(2024, 5, 1, 12, 0, 0, 123456, timezone.utc)
    assert log_time("garbage") == datetime.fromtimestamp(0, timezone.utc)
    assert log_since(api_pb2.LogsRequest(sinceTime="2024-05-01T12:00:00Z")) == datetime(2024, 5, 1, 12,
                                                                                        tzinfo=timezone.utc)
    assert log_since(api_pb2.LogsRequest()) is None
    with pytest.raises(ValueError) as e:
        log_since(api_pb2.LogsRequest(sinceTime="yesterday"))
    assert 'sinceTime: invalid value "yesterday"' in str(e.value)
