"""The kubelet's small pure pieces, with injected clocks and fakes: restart backoff
(worker/kubelet/backoff.py), one probe step with its thresholds (prober.py), the pod status
computed from the runtime's view (podstatus_compute.py) and the static pod manifest scan
(staticpods.py). The probes' network cases talk to servers on loopback that the test runs."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kubelab.api.v1 import objects_pb2 as v1
from worker.kubelet import prober
from worker.kubelet.backoff import Backoff
from worker.kubelet.podstatus_compute import ContainerView, build_status
from worker.kubelet.staticpods import HASH_ANNOTATION, MIRROR_ANNOTATION, StaticPods, is_mirror, mirror_of


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---- Backoff -------------------------------------------------------------------------------

def test_backoff_doubles_from_initial_to_the_cap():
    clock = Clock()
    b = Backoff(initial=10, maximum=300, reset_after=600, clock=clock)
    key = ("uid-1", "web")
    delays = []
    for _ in range(8):
        delays.append(b.next(key))
        clock.t += delays[-1]  # the retry comes when it may, and fails again
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    assert b.delay(key) == 300


def test_backoff_waiting_counts_down_on_the_injected_clock():
    clock = Clock()
    b = Backoff(initial=10, clock=clock)
    key = ("uid-1", "web")
    assert b.waiting(key) == 0.0 and b.delay(key) == 0.0  # never failed: go
    b.next(key)
    assert b.waiting(key) == 10.0
    clock.t += 4
    assert b.waiting(key) == 6.0
    clock.t += 100
    assert b.waiting(key) == 0.0  # never negative


def test_backoff_is_forgotten_after_clean_running_but_not_before():
    clock = Clock()
    b = Backoff(initial=10, maximum=300, reset_after=600, clock=clock)
    key = ("uid-1", "web")
    for _ in range(4):
        b.next(key)  # 10, 20, 40, 80: not before now + 80
    clock.t += 80 + 600  # exactly reset_after past the not-before time: still remembered
    assert b.next(key) == 160
    clock.t += 160 + 600.5
    assert b.next(key) == 10  # ran cleanly for longer than reset_after: starts over


def test_backoff_keys_are_independent_and_forget_pod_drops_only_that_pod():
    clock = Clock()
    b = Backoff(initial=1, clock=clock)
    for key in (("a", "web"), ("a", "side"), ("b", "web")):
        b.next(key)
    b.next(("a", "web"))
    assert (b.delay(("a", "web")), b.delay(("a", "side")), b.delay(("b", "web"))) == (2, 1, 1)
    b.forget_pod("a")
    assert (b.delay(("a", "web")), b.delay(("a", "side")), b.delay(("b", "web"))) == (0, 0, 1)
    b.reset(("b", "web"))
    assert b.waiting(("b", "web")) == 0 and b.next(("b", "web")) == 1


# ---- prober.step ---------------------------------------------------------------------------

def exec_probe(**kw) -> v1.Probe:
    p = v1.Probe(**kw)
    p.exec.command.extend(["check"])
    return p


class Results:
    """An exec_fn that answers with the next scripted (exit code, output)."""

    def __init__(self, *results):
        self.results, self.calls = list(results), []

    async def __call__(self, cmd):
        self.calls.append(cmd)
        return self.results.pop(0)


async def steps(state, probe, exec_fn, times, started_at=0.0):
    return [await prober.step(state, probe, v1.Container(name="c"), "", exec_fn, started_at, now=t) for t in times]


async def test_probe_waits_for_initial_delay_then_runs_once_per_period():
    probe = exec_probe(initialDelaySeconds=5, periodSeconds=10)
    fn = Results((0, ""), (0, ""))
    state = prober.ProbeState()
    changed = await steps(state, probe, fn, [103, 104.9, 105, 110, 114.9, 115], started_at=100)
    assert len(fn.calls) == 2 and fn.calls[0] == ["check"]
    assert changed == [False, False, True, False, False, False]  # decided once, then unchanged
    assert state.last_run == 115 and state.result is True


async def test_probe_failure_threshold_counts_consecutive_failures():
    probe = exec_probe(periodSeconds=1, failureThreshold=3)
    fn = Results((1, "bad"), (1, "bad"), (0, ""), (1, "x"), (1, "y"), (1, "z"))
    state = prober.ProbeState()
    changed = await steps(state, probe, fn, [100, 101, 102, 103, 104, 105])
    # a success in between starts the count over: only the third failure in a row decides
    assert changed == [False, False, True, False, False, True]
    assert (state.result, state.failures, state.successes, state.message) == (False, 3, 0, "z")


async def test_probe_success_threshold_and_defaults():
    probe = exec_probe(periodSeconds=1, successThreshold=2)
    fn = Results((0, ""), (1, "flap"), (0, ""), (0, ""))
    state = prober.ProbeState()
    assert await steps(state, probe, fn, [100, 101, 102, 103]) == [False, False, False, True]
    assert state.result is True and state.successes == 2

    # unset thresholds and period are Kubernetes' defaults: success 1, failure 3, period 10 s
    fn = Results((1, "no"), (1, "no"), (1, "no"))
    state = prober.ProbeState()
    assert await steps(state, exec_probe(), fn, [100, 105, 110, 115, 120]) == [False] * 4 + [True]
    assert len(fn.calls) == 3


async def test_probe_exec_timeout_is_a_failure_with_a_message():
    async def hangs(cmd):
        await asyncio.Event().wait()

    ok, msg = await prober.run_probe(exec_probe(timeoutSeconds=1), v1.Container(name="c"), "", hangs)
    assert (ok, msg) == (False, "probe timed out after 1s")
    ok, msg = await prober.run_probe(exec_probe(), v1.Container(name="c"), "", Results((2, "it broke")))
    assert (ok, msg) == (False, "it broke")


@pytest.fixture
async def http_server():
    """A loopback HTTP server answering every request with the status code set in `codes`."""
    codes = {"/": 200}

    async def handle(r, w):
        line = (await r.readline()).decode().split()
        while (await r.readline()) not in (b"\r\n", b""):
            pass
        code = codes.get(line[1], 404)
        w.write(f"HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], codes
    finally:
        server.close()
        await server.wait_closed()


async def test_probe_http_get_by_port_name_and_status_code(http_server):
    port, codes = http_server
    codes.update({"/healthz": 204, "/redirect": 302, "/broken": 500})
    container = v1.Container(name="web", ports=[v1.ContainerPort(name="http", containerPort=port)])

    async def get(path: str, by_name: bool = True):
        p = v1.Probe()
        p.httpGet.path = path
        if by_name:
            p.httpGet.port.string_value = "http"
        else:
            p.httpGet.port.number_value = port
        return await prober.run_probe(p, container, "127.0.0.1", None)

    assert await get("/healthz") == (True, "")
    assert await get("/redirect", by_name=False) == (True, "")
    assert await get("/broken") == (False, "HTTP probe failed with statuscode: 500")
    assert await get("/nothere") == (False, "HTTP probe failed with statuscode: 404")

    p = v1.Probe()
    p.httpGet.port.string_value = "metrics"  # no such named port: a failure naming it, not a crash
    assert await prober.run_probe(p, container, "127.0.0.1", None) == (False, "no container port named 'metrics'")


async def test_probe_tcp_socket_open_and_refused(http_server):
    port, _ = http_server
    p = v1.Probe()
    p.tcpSocket.port.number_value = port
    assert await prober.run_probe(p, v1.Container(name="c"), "127.0.0.1", None) == (True, "")
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    closed = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    p.tcpSocket.port.number_value = closed
    ok, msg = await prober.run_probe(p, v1.Container(name="c"), "127.0.0.1", None)
    assert not ok and "Errno 111" in msg, msg  # ECONNREFUSED, as the OSError says it


async def test_probe_step_honours_an_injected_clock_at_zero():
    probe = exec_probe(initialDelaySeconds=30)
    fn = Results((0, ""))
    assert await prober.step(prober.ProbeState(), probe, v1.Container(name="c"), "", fn, 0.0, now=0.0) is False
    assert fn.calls == []  # still inside the initial delay


# ---- build_status --------------------------------------------------------------------------

NOW = "2026-12-01T09:00:00Z"


def make_pod(*apps: str, inits: tuple[str, ...] = (), sidecars: tuple[str, ...] = (), policy: str = "") -> v1.Pod:
    pod = v1.Pod()
    pod.metadata.name, pod.metadata.uid = "p", "uid-1"
    pod.spec.restartPolicy = policy
    for name in inits:
        pod.spec.initContainers.add(name=name, image="busybox")
    for name in sidecars:
        pod.spec.initContainers.add(name=name, image="busybox", restartPolicy="Always")
    for name in apps:
        pod.spec.containers.add(name=name, image="busybox")
    return pod


def running(name: str, *, ready=True, **kw) -> ContainerView:
    return ContainerView(name, state="running", started_at=NOW, container_id=f"kubelab://{name}", ready=ready,
                         started=True, **kw)


def exited(name: str, code: int = 0, **kw) -> ContainerView:
    return ContainerView(name, state="exited", exit_code=code, started_at=NOW, finished_at=NOW,
                         container_id=f"kubelab://{name}", **kw)


def status(pod, views, *, init_done=True, sandbox_ready=True) -> v1.PodStatus:
    return build_status(pod, {v.name: v for v in views}, init_done=init_done, pod_ip="10.244.0.5",
                        host_ip="192.168.0.10", now=NOW, sandbox_ready=sandbox_ready)


def conditions(st: v1.PodStatus) -> dict[str, str]:
    return {c.type: c.status for c in st.conditions}


@pytest.mark.parametrize("policy,codes,want", [
    ("Always", (0, 0), "Running"),  # restarted forever: never done
    ("", (0, 1), "Running"),  # the default is Always
    ("OnFailure", (0, 0), "Succeeded"),
    ("OnFailure", (0, 1), "Running"),  # the failed one restarts
    ("Never", (0, 0), "Succeeded"),
    ("Never", (0, 1), "Failed"),
])
def test_phase_when_every_app_container_exited(policy, codes, want):
    pod = make_pod("a", "b", policy=policy)
    st = status(pod, [exited("a", codes[0]), exited("b", codes[1])])
    assert st.phase == want
    if want in ("Succeeded", "Failed"):
        ready = [c for c in st.conditions if c.type in ("Ready", "ContainersReady")]
        assert [(c.status, c.reason) for c in ready] == [("False", "PodCompleted")] * 2
    assert [cs.state.terminated.reason for cs in st.containerStatuses] == \
        ["Completed" if c == 0 else "Error" for c in codes]


def test_pending_pod_waits_in_container_creating_then_running_when_one_runs():
    pod = make_pod("a", "b")
    st = status(pod, [], sandbox_ready=False)
    assert st.phase == "Pending"
    assert [cs.state.waiting.reason for cs in st.containerStatuses] == ["ContainerCreating"] * 2
    assert conditions(st) == {"PodReadyToStartContainers": "False", "Initialized": "True",
                              "ContainersReady": "False", "Ready": "False", "PodScheduled": "True"}
    assert (st.podIP, [i.ip for i in st.podIPs], st.hostIP, st.startTime) == \
        ("10.244.0.5", ["10.244.0.5"], "192.168.0.10", NOW)

    st = status(pod, [running("a"), ContainerView("b", state="created")])
    assert st.phase == "Running"
    assert conditions(st)["Ready"] == "False"  # b is not running, so not ready
    st = status(pod, [running("a"), running("b")])
    assert conditions(st)["Ready"] == "True" and conditions(st)["ContainersReady"] == "True"
    st = status(pod, [running("a"), running("b", ready=False)])
    assert conditions(st)["Ready"] == "False"


def test_init_containers_gate_the_app_containers():
    pod = make_pod("app", inits=("setup",), policy="Always")
    st = status(pod, [running("setup", ready=False)], init_done=False)
    assert st.phase == "Pending" and conditions(st)["Initialized"] == "False"
    assert st.initContainerStatuses[0].state.HasField("running")
    assert st.containerStatuses[0].state.waiting.reason == "PodInitializing"

    # a failed init container fails the pod only when nothing will restart it
    for policy, want in (("Never", "Failed"), ("OnFailure", "Pending"), ("Always", "Pending")):
        pod.spec.restartPolicy = policy
        assert status(pod, [exited("setup", 1)], init_done=False).phase == want, policy

    pod.spec.restartPolicy = "Always"
    st = status(pod, [exited("setup", 0), running("app")], init_done=True)
    assert st.phase == "Running" and conditions(st)["Initialized"] == "True"
    assert st.initContainerStatuses[0].state.terminated.reason == "Completed"


def test_sidecar_readiness_counts_for_the_pod_and_its_failure_does_not_fail_init():
    pod = make_pod("app", sidecars=("proxy",), policy="Never")
    # a restartable init container (sidecar) that exits with an error is restarted, not fatal
    assert status(pod, [exited("proxy", 1)], init_done=False).phase == "Pending"
    st = status(pod, [running("proxy", ready=False), running("app")])
    assert st.phase == "Running" and conditions(st)["Ready"] == "False"  # waits for the sidecar
    st = status(pod, [running("proxy"), running("app")])
    assert conditions(st)["Ready"] == "True"


def test_crash_loop_shows_waiting_with_the_last_termination():
    pod = make_pod("app")
    view = exited("app", 2, restart_count=3, waiting_reason="CrashLoopBackOff",
                  waiting_message="back-off 40s restarting failed container")
    cs = status(pod, [view]).containerStatuses[0]
    assert (cs.state.waiting.reason, cs.state.waiting.message) == \
        ("CrashLoopBackOff", "back-off 40s restarting failed container")
    assert (cs.lastState.terminated.exitCode, cs.lastState.terminated.reason, cs.restartCount) == (2, "Error", 3)

    # running again after a restart: the previous attempt is the last state
    again = running("app", restart_count=4, last=exited("app", 137, reason="OOMKilled"))
    cs = status(pod, [again]).containerStatuses[0]
    assert cs.state.HasField("running") and cs.lastState.terminated.reason == "OOMKilled"
    assert cs.restartCount == 4 and cs.containerID == "kubelab://app"


def test_image_pull_errors_are_waiting_reasons():
    pod = make_pod("app")
    cs = status(pod, [ContainerView("app", waiting_reason="ErrImagePull", waiting_message='image "x" not found')]
                ).containerStatuses[0]
    assert (cs.state.waiting.reason, cs.state.waiting.message) == ("ErrImagePull", 'image "x" not found')
    assert status(pod, [ContainerView("app", waiting_reason="ErrImagePull")]).phase == "Pending"


def test_condition_transition_times_move_only_on_change():
    pod = make_pod("app")
    first = status(pod, [running("app")])
    pod.status.CopyFrom(first)
    later = build_status(pod, {"app": running("app")}, init_done=True, pod_ip="10.244.0.5", host_ip="h",
                         now="2026-12-01T10:00:00Z", sandbox_ready=True)
    assert {c.type: c.lastTransitionTime for c in later.conditions} == {c.type: NOW for c in first.conditions}
    assert later.startTime == NOW  # kept from the first status
    pod.status.CopyFrom(later)
    gone = build_status(pod, {"app": running("app", ready=False)}, init_done=True, pod_ip="10.244.0.5",
                        host_ip="h", now="2026-12-01T11:00:00Z", sandbox_ready=True)
    times = {c.type: c.lastTransitionTime for c in gone.conditions}
    assert times["Ready"] == times["ContainersReady"] == "2026-12-01T11:00:00Z"
    assert times["Initialized"] == NOW


# ---- StaticPods.scan -----------------------------------------------------------------------

POD_YAML = """apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - name: etcd
    image: busybox
"""


def test_scan_turns_manifests_into_static_pods(tmp_path):
    (tmp_path / "etcd.yaml").write_text(POD_YAML)
    (tmp_path / "web.json").write_text(
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, '
        '"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, '
        '"containers": [{"name": "w", "image": "busybox", "imagePullPolicy": "Always"}]}}')
    for ignored in (".etcd.yaml.swp", "README.md", "notes.txt"):
        (tmp_path / ignored).write_text("not: [a pod")
    (tmp_path / ".hidden.yaml").write_text(POD_YAML.replace("name: etcd", "name: hidden"))  # an editor's copy
    pods = StaticPods(tmp_path, "node-1").scan()
    by_name = {p.metadata.name: p for p in pods.values()}
    assert sorted(by_name) == ["etcd-node-1", "web-node-1"]
    etcd, web = by_name["etcd-node-1"], by_name["web-node-1"]
    assert (etcd.metadata.namespace, web.metadata.namespace) == ("kube-system", "default")
    assert etcd.spec.nodeName == "node-1" and etcd.spec.restartPolicy == "Always"
    assert etcd.spec.terminationGracePeriodSeconds == 30 and web.spec.terminationGracePeriodSeconds == 0
    assert web.spec.restartPolicy == "Never"
    assert etcd.spec.containers[0].imagePullPolicy == "IfNotPresent"
    assert web.spec.containers[0].imagePullPolicy == "Always"
    assert etcd.metadata.annotations["kubernetes.io/config.source"] == "file"
    assert all(uid == p.metadata.uid for uid, p in pods.items())


def test_scan_uid_is_stable_and_changes_with_the_file_or_the_node(tmp_path):
    (tmp_path / "etcd.yaml").write_text(POD_YAML)
    first = StaticPods(tmp_path, "node-1").scan()
    assert StaticPods(tmp_path, "node-1").scan().keys() == first.keys()  # a restarted kubelet finds the same pod
    assert StaticPods(tmp_path, "node-2").scan().keys() != first.keys()
    (tmp_path / "etcd.yaml").write_text(POD_YAML.replace("image: busybox", "image: busybox:1.36"))
    changed = StaticPods(tmp_path, "node-1").scan()
    assert changed.keys() != first.keys()  # an edited manifest is a new pod (the old one is stopped)
    pod = next(iter(changed.values()))
    assert pod.metadata.annotations[HASH_ANNOTATION] == pod.metadata.uid.replace("-", "")


def test_scan_names_bad_manifests_once_and_keeps_the_good_ones(tmp_path, caplog):
    (tmp_path / "good.yaml").write_text(POD_YAML)
    bad = {
        "broken.yaml": "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n",
        "list.yaml": "- a\n- b\n",
        "empty.yml": "",
        "namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: s\n",
        "service.yaml": "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: s\n",
        "nokind.yaml": "apiVersion: v1\nmetadata:\n  name: x\n",
        "badfield.yaml": POD_YAML.replace("namespace: kube-system", "namespace: kube-system\n  colour: blue"),
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    static = StaticPods(tmp_path, "n")
    with caplog.at_level(logging.ERROR, logger="kubelet.static"):
        pods = static.scan()
        assert [p.metadata.name for p in pods.values()] == ["etcd-n"]
        assert sorted(static.errors) == sorted(str(tmp_path / n) for n in bad)
        errors = {name.rsplit("/", 1)[1]: message for name, message in static.errors.items()}
        assert "line 3" in errors["broken.yaml"]
        assert "not array" in errors["list.yaml"] and "not NoneType" in errors["empty.yml"]
        assert "must be a Pod" in errors["namespace.yaml"]
        assert 'no matches for kind "Ingress"' in errors["service.yaml"]
        assert "Object 'Kind' is missing" in errors["nokind.yaml"]
        assert 'unknown field "metadata.colour"' in errors["badfield.yaml"]
        # each is logged once, naming the file
        assert sorted(r.args[0].name for r in caplog.records) == sorted(bad)
        logged = len(caplog.records)
        static.scan()
        assert len(caplog.records) == logged  # the same error is not reported at every scan

    (tmp_path / "broken.yaml").write_text(POD_YAML.replace("name: etcd\n", "name: fixed\n", 1))
    pods = static.scan()
    assert sorted(p.metadata.name for p in pods.values()) == ["etcd-n", "fixed-n"]
    assert str(tmp_path / "broken.yaml") not in static.errors


def test_scan_of_a_missing_directory_is_empty(tmp_path):
    assert StaticPods(tmp_path / "nothere", "n").scan() == {}


def test_scan_survives_a_manifest_that_is_not_utf8(tmp_path):
    (tmp_path / "good.yaml").write_text(POD_YAML)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    static = StaticPods(tmp_path, "n")
    assert [p.metadata.name for p in static.scan().values()] == ["etcd-n"]
    assert str(tmp_path / "binary.yaml") in static.errors


def test_scan_rejects_a_pod_without_a_name(tmp_path):
    (tmp_path / "noname.yaml").write_text(POD_YAML.replace("  name: etcd\n", ""))
    static = StaticPods(tmp_path, "n")
    assert static.scan() == {}
    assert "metadata.name" in static.errors[str(tmp_path / "noname.yaml")]


def test_mirror_pod_carries_the_hash_and_no_identity(tmp_path):
    (tmp_path / "etcd.yaml").write_text(POD_YAML)
    pod = next(iter(StaticPods(tmp_path, "n").scan().values()))
    pod.metadata.resourceVersion = "12"
    pod.status.phase = "Running"
    mirror = mirror_of(pod)
    assert is_mirror(mirror) and not is_mirror(pod)
    assert mirror.metadata.annotations[MIRROR_ANNOTATION] == pod.metadata.annotations[HASH_ANNOTATION]
    assert (mirror.metadata.uid, mirror.metadata.resourceVersion, mirror.status.phase) == ("", "", "")
    assert mirror.metadata.name == pod.metadata.name and mirror.spec == pod.spec
