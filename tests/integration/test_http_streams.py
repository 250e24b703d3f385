"""pods/log, pods/exec, pods/attach, pods/binding and pods/eviction over the HTTP API, with the
real kubectl, the official Python client (its WebSocket `stream()`) and a bare WebSocket
client speaking v4.channel.k8s.io, against a real kubelet running busybox in runc.

One `kubelab control-plane` and one real node (test_kubectl.RealNode, pod range CLUSTER_CIDR
of its own) for the module; the pods name the node (the scheduler is not needed), and the
module's teardown takes back every pod, container and host change.
"""
from __future__ import annotations

import json
import re
import os
import pty
import select
import ssl
import subprocess
import time

import pytest
import urllib3
import websocket
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from .conftest import launch_control_plane, stop_control_plane, stop_group
from .test_kubectl import KUBECTL, Kubectl, Lines, RealNode, until

CLUSTER_CIDR = "10.206.0.0/16"  # apart from test_kubectl's 10.204/16 and test_k8s_client's 10.205/16
NODE = "streams-node"
NS = "default"
# prints three lines, then a fourth once /tmp/go exists (the follow test makes it with exec)
TALKER = "echo one; echo two; echo three; while [ ! -f /tmp/go ]; do sleep 0.1; done; echo after; exec sleep 100000"


def pod(name: str, containers: list[dict], node: str = NODE) -> dict:
    spec = {"terminationGracePeriodSeconds": 1, "containers": containers}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def busybox(name: str, script: str, image: str = "busybox") -> dict:
    return {"name": name, "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", script]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("streams")
    cp = launch_control_plane(d, "--cluster-cidr", CLUSTER_CIDR)
    node = RealNode(cp, d / "node", NODE, CLUSTER_CIDR)
    try:
        node.start()
        cp.k = Kubectl(cp.config, d / "home")
        until(lambda: re.search(rf"^{NODE} +Ready ", cp.kubelab("get", "nodes", check=False).stdout, re.M),
              what="the real node Ready")
        docs = [pod("talker", [busybox("c", TALKER)]),
                pod("two", [busybox("a", "exec sleep 100000"), busybox("b", "exec sleep 100000")]),
                pod("waiting", [busybox("c", "true", image="nosuch-image:1")])]
        cp.k("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        until(lambda: cp.k("get", "pods", "talker", "two", "--no-headers", ok=None).stdout.count("Running") == 2,
              what="talker and two Running")
        until(lambda: cp.k("logs", "talker", ok=None).stdout == "one\ntwo\nthree\n", what="talker's three lines")
        until(lambda: "ErrImageNeverPull" in cp.k("get", "pod", "waiting", "--no-headers", ok=None).stdout,
              what="waiting's image refused")
        yield cp
    finally:
        try:
            node.stop()
        finally:
            stop_control_plane(cp)
    left = node.leftovers()
    assert not left, f"the real node left behind: {left}"


@pytest.fixture(scope="module")
def k(cluster) -> Kubectl:
    return cluster.k


@pytest.fixture(scope="module")
def cfg(cluster) -> k8s.Configuration:
    c = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(cluster.config), client_configuration=c)
    return c


@pytest.fixture(scope="module")
def core(cfg):
    api = k8s.ApiClient(cfg)
    try:
        yield k8s.CoreV1Api(api)
    finally:
        api.close()


def error_body(e: ApiException) -> dict:
    return json.loads(e.body)


def raw(cfg: k8s.Configuration, method: str, path: str, body: dict | None = None):
    """One HTTP request as the client's configuration would send it, without its model checks."""
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=cfg.ssl_ca_cert, cert_file=cfg.cert_file,
                               key_file=cfg.key_file, assert_hostname=False)
    r = http.request(method, cfg.host + path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"Content-Type": "application/json"}, timeout=60)
    return r.status, r.data


# --- pods/log ------------------------------------------------------------------------------

def test_logs_and_tail(k):
    assert k("logs", "talker").stdout == "one\ntwo\nthree\n"
    assert k("logs", "talker", "--tail=1").stdout == "three\n"
    assert k("logs", "talker", "--tail=0").stdout == ""
    assert k("logs", "pod/talker", "-c", "c", "--limit-bytes=6").stdout == "one\ntw"


def test_logs_errors(k, core):
    # kubectl checks -c against the pod itself; the server's own answer, through the client:
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log("talker", NS, container="nosuch")
    assert e.value.status == 400 and error_body(e.value)["message"] == "container nosuch is not valid for pod talker"
    r = k("logs", "waiting", ok=False)
    assert r.stderr.strip() == ('Error from server (BadRequest): container "c" in pod "waiting" is waiting to start: '
                                'ErrImageNeverPull'), r.stderr  # the kubelet's reason, as in Kubernetes
    r = k("logs", "talker", "--previous", ok=False)
    assert r.stderr.strip() == ('Error from server (BadRequest): previous terminated container "c" in pod "talker" '
                                'not found'), r.stderr
    r = k("logs", "nosuch", ok=False)  # kubectl's own words around the server's NotFound
    assert r.stderr.strip() == 'error: error from server (NotFound): pods "nosuch" not found in namespace "default"'
    # kubectl picks a container itself when there are several; the server's own answer:
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log("two", NS)
    assert e.value.status == 400 and error_body(e.value)["reason"] == "BadRequest"
    assert error_body(e.value)["message"] == "a container name must be specified for pod two, choose one of: [a b]"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log("talker", NS, tail_lines=-1)
    assert e.value.status == 422 and error_body(e.value)["message"] == \
        'PodLogOptions "talker" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0', e.value.body


def test_logs_options_from_the_python_client(core, cfg):
    assert core.read_namespaced_pod_log("talker", NS) == "one\ntwo\nthree\n"
    stamped = core.read_namespaced_pod_log("talker", NS, timestamps=True).splitlines()
    assert len(stamped) == 3 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z " + w, line)
                                     for line, w in zip(stamped, ("one", "two", "three"))), stamped
    assert core.read_namespaced_pod_log("talker", NS, since_seconds=86400) == "one\ntwo\nthree\n"
    # the lines are older than the second sinceTime: none of them
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert core.read_namespaced_pod_log("talker", NS, tail_lines=2) == "two\nthree\n"
    assert raw(cfg, "GET", f"/api/v1/namespaces/{NS}/pods/talker/log?sinceTime={later}") == (200, b"")
    status, body = raw(cfg, "GET", f"/api/v1/namespaces/{NS}/pods/talker/log?sinceTime={later}&sinceSeconds=5")
    assert status == 422 and "at most one of `sinceTime` or `sinceSeconds` may be specified" in body.decode()
    assert core.read_namespaced_pod_log("two", NS, container="b") == ""


def test_logs_follow_gets_a_line_written_while_following(k):
    lines = Lines(k.popen("logs", "-f", "talker"))
    try:
        lines.wait_for(lambda ln: ln == "three", what="the first three lines")
        k("exec", "talker", "--", "touch", "/tmp/go")
        lines.wait_for(lambda ln: ln == "after", what="the line written while following")
        assert lines.seen == ["one", "two", "three", "after"], lines.seen
    finally:
        lines.stop()


def test_following_a_quiet_container_answers_at_once(core):
    # the 200 goes out when the kubelet has found the container, not with the first line
    r = core.read_namespaced_pod_log("two", NS, container="b", follow=True, _preload_content=False,
                                     _request_timeout=30)
    try:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    finally:
        r.close()  # the server's handler ends with the connection


# --- pods/exec -----------------------------------------------------------------------------

def test_kubectl_exec(k):
    assert k("exec", "talker", "--", "echo", "hi there").stdout == "hi there\n"
    r = k("exec", "talker", "--", "sh", "-c", "echo out; echo err >&2; exit 3", ok=None)
    assert (r.returncode, r.stdout, r.stderr.strip()) == (3, "out\n", "err\ncommand terminated with exit code 3"), r
    assert k("exec", "-i", "talker", "--", "sh", "-c", "tr a-z A-Z", stdin="from stdin\n").stdout == "FROM STDIN\n"
    assert k("exec", "two", "-c", "b", "--", "echo", "b here").stdout == "b here\n"


def test_exec_errors(k, core):
    r = k("exec", "nosuch", "--", "true", ok=False)
    assert 'Error from server (NotFound): pods "nosuch" not found' in r.stderr, r.stderr
    with pytest.raises(ApiException) as e:  # kubectl checks -c itself: the server's answer
        stream(core.connect_get_namespaced_pod_exec, "talker", NS, container="nosuch", command=["true"],
               stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False)
    # the client reports a refused upgrade as status 0 with the handshake's answer as reason
    assert "Handshake status 400" in e.value.reason and "container nosuch is not valid for pod talker" in \
        e.value.reason, e.value.reason


def test_python_client_stream(core):
    ws = stream(core.connect_get_namespaced_pod_exec, "talker", NS, command=["sh", "-c", "echo out; echo err >&2; exit 4"],
                stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False)
    ws.run_forever(timeout=60)
    assert (ws.returncode, ws.read_stdout(), ws.read_stderr()) == (4, "out\n", "err\n")
    assert stream(core.connect_get_namespaced_pod_exec, "talker", NS, command=["echo", "preloaded"],
                  stdout=True, stderr=True, stdin=False, tty=False) == "preloaded\n"
    # stdin, then its close (v5's close signal): cat ends and says what it read
    ws = stream(core.connect_get_namespaced_pod_exec, "talker", NS, command=["sh", "-c", "cat; echo done"],
                stdout=True, stderr=True, stdin=True, tty=False, _preload_content=False)
    ws.write_stdin("typed\n")
    ws.close_channel(0)
    ws.run_forever(timeout=60)
    assert (ws.returncode, ws.read_stdout()) == (0, "typed\ndone\n")


def _raw_ws(cfg: k8s.Configuration, path: str, protocol: str):
    url = cfg.host.replace("https://", "wss://") + path
    sslopt = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": cfg.ssl_ca_cert, "certfile": cfg.cert_file,
              "keyfile": cfg.key_file, "check_hostname": False}
    return websocket.create_connection(url, subprotocols=[protocol], sslopt=sslopt, timeout=60)


def _frames(ws) -> list[tuple[int, bytes]]:
    out = []
    while True:
        try:
            op, data = ws.recv_data(control_frame=False)
        except websocket.WebSocketConnectionClosedException:
            return out
        if op == websocket.ABNF.OPCODE_CLOSE:
            return out
        out.append((data[0], bytes(data[1:])))


def test_v4_channel_protocol(cfg):
    # v4 has no close signal: the script ends by itself once it has read three bytes
    ws = _raw_ws(cfg, f"/api/v1/namespaces/{NS}/pods/talker/exec?command=sh&command=-c"
                      "&command=head%20-c%203%3Becho%3Bexit%205&stdin=true&stdout=true&stderr=true", "v4.channel.k8s.io")
    try:
        assert ws.subprotocol == "v4.channel.k8s.io"
        ws.send_binary(b"\x04" + json.dumps({"Width": 80, "Height": 24}).encode())  # resize: accepted, ignored
        ws.send_binary(b"\x00abc")
        frames = _frames(ws)
    finally:
        ws.close()
    assert frames[0] == (1, b""), frames  # the empty frame that says the stream is up
    assert b"".join(d for c, d in frames if c == 1) == b"abc\n", frames
    channel, status = frames[-1]
    assert channel == 3 and json.loads(status) == {
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: command 'sh -c head -c 3;echo;exit 5' exited with 5: ",
        "details": {"causes": [{"reason": "ExitCode", "message": "5"}]}}, frames


def test_a_client_that_leaves_ends_the_process(cfg, k):
    ws = _raw_ws(cfg, f"/api/v1/namespaces/{NS}/pods/talker/exec?command=sleep&command=4242&stdout=true",
                 "v5.channel.k8s.io")
    try:
        assert ws.recv_data()[1] == b"\x01"  # started
        assert "sleep 4242" in k("exec", "talker", "--", "ps", "-o", "args").stdout
    finally:
        ws.close()
    until(lambda: "sleep 4242" not in k("exec", "talker", "--", "ps", "-o", "args").stdout, 30,
          what="the exec'd process gone with its client")


def test_exec_refusals_before_the_upgrade(cfg):
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        _raw_ws(cfg, f"/api/v1/namespaces/{NS}/pods/talker/exec?stdout=true", "v5.channel.k8s.io")
    assert e.value.status_code == 400 and b"you must specify at least one command for the container" in \
        e.value.resp_body
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        _raw_ws(cfg, f"/api/v1/namespaces/{NS}/pods/talker/exec?command=true", "channel.k8s.io")
    assert e.value.status_code == 400 and b"v5.channel.k8s.io, v4.channel.k8s.io" in e.value.resp_body


# --- pods/attach ---------------------------------------------------------------------------

def test_attach_streams_output_from_now_on(core, k):
    ws = stream(core.connect_get_namespaced_pod_attach, "two", NS, container="a", stdout=True, stderr=True,
                stdin=False, tty=False, _preload_content=False)
    try:
        until(lambda: ws.is_open(), 30, what="the attach stream open")
        # the container's own output: write to its pid 1's stdout (what conmon logs)
        k("exec", "two", "-c", "a", "--", "sh", "-c", "echo attached-line > /proc/1/fd/1")
        got = ""
        end = time.monotonic() + 60
        while "attached-line" not in got and time.monotonic() < end:
            ws.update(timeout=1)
            got += ws.read_stdout() or ""
        assert got == "attached-line\n", got
    finally:
        ws.close()
    with pytest.raises(ApiException) as e:
        stream(core.connect_get_namespaced_pod_attach, "two", NS, container="a", stdout=True, stdin=True,
               tty=False, _preload_content=False)
    assert "Handshake status 400" in e.value.reason and "container a in pod two was not created with stdin" \
        in e.value.reason, e.value.reason


def test_kubectl_attach_and_run_i(k):
    lines = Lines(k.popen("attach", "two", "-c", "b"))
    try:
        # only what the container writes after the attach is up comes through, and when that is
        # cannot be seen from outside: write until a line arrives (bounded)
        end = time.monotonic() + 60
        while True:
            k("exec", "two", "-c", "b", "--", "sh", "-c", "echo via-attach > /proc/1/fd/1")
            try:
                lines.wait_for(lambda ln: ln == "via-attach", 3, what="the attached output")
                break
            except AssertionError:
                if time.monotonic() > end or lines.proc.poll() is not None:
                    raise
    finally:
        lines.stop()
    # -i to a container created without stdin: refused in so many words, before any upgrade
    r = k("attach", "-i", "two", "-c", "b", ok=False, timeout=60)
    assert "container b in pod two was not created with stdin" in r.stderr, (r.stdout, r.stderr)


def test_attach_is_admitted_as_create_pods_attach(k, cluster, tmp_path):
    # the scheduler's identity may read pods (kubectl's GET before attaching) but not attach
    sched = k.as_user("system:kube-scheduler", [], cluster.data_dir / "pki", tmp_path / "sched")
    r = sched("attach", "two", "-c", "a", ok=False)
    assert 'User "system:kube-scheduler" cannot create resource "pods/attach" in API group "" in the ' \
           'namespace "default"' in r.stderr, (r.stdout, r.stderr)


def test_kubectl_run_i_feeds_stdin_and_removes_the_pod(k):
    # kubectl run -i makes the container with stdin and stdinOnce, attaches with stdin, sends
    # its own stdin, then closes it: the container reads the line (it waits for it, so nothing
    # it prints can be missed), cat the rest until the close (stdinOnce: it reaches the
    # container), and ends; --rm deletes the pod
    r = k("run", "-i", "--rm", "--restart=Never", "reader", "--image=busybox", "--image-pull-policy=Never",
          "--overrides", json.dumps({"spec": {"nodeName": NODE}}), "--", "sh", "-c",
          "read l; echo got $l; cat; echo stdin-closed", stdin="hello-stdin\nthe-rest\n", timeout=120)
    assert "got hello-stdin\nthe-rest\nstdin-closed\n" in r.stdout, (r.stdout, r.stderr)
    until(lambda: "NotFound" in k("get", "pod", "reader", ok=None).stderr, what="--rm deleting the pod")


def _attach_and_echo(k, word: str) -> None:
    proc = subprocess.Popen([KUBECTL, "attach", "-i", "catter"], env=k.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = Lines(proc)
    try:
        # a line typed before the attach is up reaches cat but is echoed to nobody: type until
        # an echo comes back (cat echoes every line it reads)
        end = time.monotonic() + 60
        while True:
            proc.stdin.write(f"{word}-line\n")
            proc.stdin.flush()
            try:
                lines.wait_for(lambda ln: ln == f"{word}-line", 3, what="cat echoing the typed line")
                return
            except AssertionError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
    finally:
        lines.stop()


def test_kubectl_attach_i_to_cat(k):
    k("apply", "-f", "-", stdin=yaml.safe_dump(pod("catter", [dict(busybox("c", "exec cat"), stdin=True)])))
    try:
        until(lambda: "Running" in k("get", "pod", "catter", "--no-headers", ok=None).stdout, what="catter Running")
        _attach_and_echo(k, "first")
        # not stdinOnce: the first client leaving left cat's stdin open for the next one
        _attach_and_echo(k, "second")
    finally:
        k("delete", "pod", "catter", "--grace-period=0", "--force", ok=None)


def test_kubectl_run_it_on_a_terminal(k):
    # kubectl run -it needs a terminal of its own: a pty. The container gets stdin, stdinOnce
    # and tty; what is typed reaches its shell through the terminal, and --rm deletes the pod
    master, slave = pty.openpty()
    proc = subprocess.Popen([KUBECTL, "run", "-it", "--rm", "--restart=Never", "term", "--image=busybox",
                             "--image-pull-policy=Never", "--overrides", json.dumps({"spec": {"nodeName": NODE}}),
                             "--", "sh", "-c", "read l; echo got-$l-on-$(tty)"],
                            env=k.env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    got = b""
    try:
        end = time.monotonic() + 90
        while b"got-typed-on-/dev/pts/0" not in got and time.monotonic() < end and proc.poll() is None:
            # typed until the shell answers: a line typed before the attach is up is lost
            os.write(master, b"typed\r")
            while select.select([master], [], [], 1)[0]:
                try:
                    got += os.read(master, 4096)
                except OSError:  # EIO: kubectl has closed the terminal
                    break
        assert b"got-typed-on-/dev/pts/0" in got, got
        while proc.poll() is None and time.monotonic() < end + 60:  # --rm, then kubectl exits
            if select.select([master], [], [], 1)[0]:
                try:
                    os.read(master, 4096)
                except OSError:
                    pass
        assert proc.returncode == 0, got
    finally:
        stop_group(proc, timeout=10)
        os.close(master)
    until(lambda: "NotFound" in k("get", "pod", "term", ok=None).stderr, what="--rm deleting the pod")


def test_attach_to_a_tty_container(core, k):
    # tty: true runs the process on a terminal (conmon -t): an interactive shell, attached with
    # stdin and tty by the official client, runs what it is sent and answers through the terminal
    k("apply", "-f", "-", stdin=yaml.safe_dump(pod("shell", [dict(busybox("c", "exec sh"), stdin=True, tty=True)])))
    try:
        until(lambda: "Running" in k("get", "pod", "shell", "--no-headers", ok=None).stdout, what="shell Running")
        ws = stream(core.connect_get_namespaced_pod_attach, "shell", NS, stdout=True, stderr=True, stdin=True,
                    tty=True, _preload_content=False)
        try:
            until(lambda: ws.is_open(), 30, what="the attach stream open")
            got, end = "", time.monotonic() + 60
            while "on-/dev/pts/0" not in got and time.monotonic() < end:
                ws.write_stdin("echo on-$(tty)\n")
                ws.update(timeout=1)
                got += ws.read_stdout() or ""
            assert "on-/dev/pts/0" in got, got
        finally:
            ws.close()
    finally:
        k("delete", "pod", "shell", "--grace-period=0", "--force", ok=None)


# --- pods/binding, pods/eviction -----------------------------------------------------------

def test_binding_then_eviction(core, k, cfg):
    manifest = pod("unbound", [busybox("c", "exec sleep 100000")], node="")
    manifest["spec"]["schedulerName"] = "nobody"  # the cluster's scheduler leaves it alone
    k("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "unbound"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}
    # the client cannot read a Status as a V1Binding: the raw answer
    r = core.create_namespaced_pod_binding("unbound", NS, body, _preload_content=False)
    assert r.status == 201 and json.loads(r.data)["status"] == "Success"
    assert k("get", "pod", "unbound", "-o", "jsonpath={.spec.nodeName}").stdout == NODE
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod_binding("unbound", NS, dict(body, metadata={"name": "other"}), _preload_content=False)
    assert e.value.status == 400 and "name in URL does not match name in Binding object" in e.value.body
    until(lambda: k("get", "pod", "unbound", "--no-headers", ok=None).stdout.split()[2:3] == ["Running"],
          what="the bound pod Running on the node")

    ev = k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name="unbound", namespace=NS),
                        delete_options=k8s.V1DeleteOptions(grace_period_seconds=0))
    r = core.create_namespaced_pod_eviction("unbound", NS, ev, _preload_content=False)
    assert r.status == 201 and json.loads(r.data) == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                      "status": "Success", "code": 201}
    until(lambda: "NotFound" in k("get", "pod", "unbound", ok=None).stderr, what="the evicted pod gone")
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod_eviction("unbound", NS, ev, _preload_content=False)
    assert e.value.status == 404 and error_body(e.value)["message"] == 'pods "unbound" not found'
    status, body = raw(cfg, "POST", f"/api/v1/namespaces/{NS}/pods/talker/eviction",
                       {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "talker"},
                        "deleteOption": {}})
    assert status == 400 and 'unknown field "deleteOption"' in json.loads(body)["message"], body
    assert k("get", "pod", "talker", "-o", "jsonpath={.metadata.deletionTimestamp}").stdout == ""
