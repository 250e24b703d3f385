"""From what the runtime shows to the pod status the API shows: phase, conditions and
containerStatuses, computed as pure functions over the pod spec and the runtime's view of its
containers (so they are unit-testable without containers)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kubelab.api.v1 import objects_pb2 as v1

from .podstatus import set_pod_condition


@dataclass
class ContainerView:
    """The kubelet's view of one container name of a pod: its latest attempt and the one before."""
    name: str
    state: str = "none"  # none | created | running | exited
    exit_code: int = 0
    reason: str = ""
    started_at: str = ""
    finished_at: str = ""
    container_id: str = ""
    image: str = ""
    restart_count: int = 0
    last: "ContainerView | None" = None
    waiting_reason: str = ""  # ContainerCreating, CrashLoopBackOff, ErrImagePull, ...
    waiting_message: str = ""
    ready: bool = False
    started: bool = False


def container_status(spec: v1.Container, view: ContainerView | None) -> v1.ContainerStatus:
    cs = v1.ContainerStatus(name=spec.name, image=spec.image)
    if view is None or view.state == "none":
        cs.state.waiting.reason = (view.waiting_reason if view and view.waiting_reason else "ContainerCreating")
        if view and view.waiting_message:
            cs.state.waiting.message = view.waiting_message
        cs.started = False
        return cs
    cs.containerID = view.container_id
    cs.imageID = view.image or spec.image
    cs.restartCount = view.restart_count
    if view.waiting_reason and view.state == "exited":
        # exited and waiting to restart: the real kubelet shows Waiting with the last state
        cs.state.waiting.reason = view.waiting_reason
        cs.state.waiting.message = view.waiting_message
        _terminated(cs.lastState, view)
    elif view.state == "running":
        cs.state.running.startedAt = view.started_at
        cs.ready = view.ready
        cs.started = view.started
        if view.last is not None:
            _terminated(cs.lastState, view.last)
    elif view.state == "exited":
        _terminated(cs.state, view)
        if view.last is not None:
            _terminated(cs.lastState, view.last)
    else:  # created, not started yet
        cs.state.waiting.reason = "ContainerCreating"
    return cs


def _terminated(state: v1.ContainerState, view: ContainerView) -> None:
    t = state.terminated
    t.exitCode = view.exit_code
    t.reason = view.reason or ("Completed" if view.exit_code == 0 else "Error")
    t.startedAt, t.finishedAt, t.containerID = view.started_at, view.finished_at, view.container_id


def phase(pod: v1.Pod, views: dict[str, ContainerView], init_done: bool) -> str:
    apps = [views.get(c.name) for c in pod.spec.containers]
    policy = pod.spec.restartPolicy or "Always"
    if not init_done:
        failed_init = any(v is not None and v.state == "exited" and v.exit_code != 0
                          for c in pod.spec.initContainers if c.restartPolicy != "Always"
                          for v in [views.get(c.name)]) and policy == "Never"
        return "Failed" if failed_init else "Pending"
    if any(v is None or v.state in ("none", "created") and not v.restart_count for v in apps):
        return "Pending" if not any(v is not None and v.state == "running" for v in apps) else "Running"
    if any(v.state == "running" for v in apps):
        return "Running"
    # every app container has exited
    if policy == "Always":
        return "Running"
    if all(v.exit_code == 0 for v in apps):
        return "Succeeded"
    if policy == "OnFailure":
        return "Running"
    return "Failed"


def build_status(pod: v1.Pod, views: dict[str, ContainerView], *, init_done: bool, pod_ip: str,
                 host_ip: str, now: str, sandbox_ready: bool) -> v1.PodStatus:
    st = v1.PodStatus()
    st.CopyFrom(pod.status)
    st.phase = phase(pod, views, init_done)
    st.hostIP = host_ip
    if pod_ip:
        st.podIP = pod_ip
        del st.podIPs[:]
        st.podIPs.add(ip=pod_ip)
    st.startTime = st.startTime or now
    del st.initContainerStatuses[:]
    for c in pod.spec.initContainers:
        cs = container_status(c, views.get(c.name))
        if cs.state.HasField("waiting") and cs.state.waiting.reason == "ContainerCreating" and init_done:
            cs.state.waiting.reason = "PodInitializing"
        st.initContainerStatuses.append(cs)
    del st.containerStatuses[:]
    for c in pod.spec.containers:
        cs = container_status(c, views.get(c.name))
        if not init_done and cs.state.HasField("waiting") and cs.state.waiting.reason == "ContainerCreating":
            cs.state.waiting.reason = "PodInitializing"
        st.containerStatuses.append(cs)
    containers_ready = all(cs.ready for cs in st.containerStatuses) and all(
        cs.ready for c, cs in zip(pod.spec.initContainers, st.initContainerStatuses) if c.restartPolicy == "Always")
    set_pod_condition(st, "PodReadyToStartContainers", sandbox_ready, now)
    set_pod_condition(st, "Initialized", init_done, now)
    set_pod_condition(st, "ContainersReady", containers_ready and st.phase == "Running", now)
    set_pod_condition(st, "Ready", containers_ready and st.phase == "Running", now)
    set_pod_condition(st, "PodScheduled", True, now)
    if st.phase in ("Succeeded", "Failed"):
        set_pod_condition(st, "Ready", False, now, "PodCompleted")
        set_pod_condition(st, "ContainersReady", False, now, "PodCompleted")
    return st


@dataclass
class Probed:
    """Probe results the prober keeps per container (readiness drives Ready)."""
    ready: bool = False
    started: bool = True
    liveness_failures: int = 0
    results: dict = field(default_factory=dict)
