"""Pod status as the kubelet's status manager writes it: phase, the four pod conditions, and
containerStatuses. Shared by the kubelet and the hollow nodes so both report alike.
"""
from __future__ import annotations

import datetime as dt

from kubelab import meta
from kubelab.api.v1 import objects_pb2 as v1


def set_pod_condition(status: v1.PodStatus, ctype: str, value: bool, now: str, reason: str = "") -> None:
    s = "True" if value else "False"
    for c in status.conditions:
        if c.type == ctype:
            if c.status != s:
                c.status, c.lastTransitionTime = s, now
            c.reason = reason
            return
    status.conditions.add(type=ctype, status=s, lastTransitionTime=now, reason=reason)


def running_status(pod: v1.Pod, pod_ip: str, host_ip: str, now: dt.datetime, *,
                   container_id_prefix: str = "kubelab://") -> v1.PodStatus:
    """The status of a pod whose containers all run and are ready (what hollow nodes report)."""
    ts = meta.rfc3339(now)
    st = v1.PodStatus()
    st.CopyFrom(pod.status)
    st.phase = "Running"
    st.hostIP, st.podIP = host_ip, pod_ip
    del st.podIPs[:]
    st.podIPs.add(ip=pod_ip)
    st.startTime = st.startTime or ts
    for ctype in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"):
        set_pod_condition(st, ctype, True, ts)
    del st.containerStatuses[:]
    for i, c in enumerate(pod.spec.containers):
        cs = st.containerStatuses.add(name=c.name, ready=True, restartCount=0, image=c.image,
                                      imageID=c.image, started=True,
                                      containerID=f"{container_id_prefix}{pod.metadata.uid[:8]}-{i}")
        cs.state.running.startedAt = ts
    return st
