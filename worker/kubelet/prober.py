"""Liveness, readiness and startup probes: exec (in the container), httpGet and tcpSocket
(to the pod IP, from the node). One result per probe per period; thresholds as Kubernetes
counts them. Probes run inside the pod worker's sync, so no extra tasks outlive a pod."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from kubelab.api.v1 import objects_pb2 as v1


@dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0
    last_run: float = 0.0
    result: bool | None = None  # None: not decided yet
    message: str = ""


@dataclass
class ContainerProbes:
    liveness: ProbeState = field(default_factory=ProbeState)
    readiness: ProbeState = field(default_factory=ProbeState)
    startup: ProbeState = field(default_factory=ProbeState)


def port_of(value, container: v1.Container) -> int:
    if value.WhichOneof("kind") == "number_value":
        return int(value.number_value)
    for p in container.ports:
        if p.name == value.string_value:
            return p.containerPort
    raise ValueError(f"no container port named {value.string_value!r}")


async def run_probe(probe: v1.Probe, container: v1.Container, pod_ip: str, exec_fn) -> tuple[bool, str]:
    timeout = probe.timeoutSeconds or 1
    try:
        if probe.HasField("exec"):
            code, out = await asyncio.wait_for(exec_fn(list(probe.exec.command)), timeout)
            return code == 0, out if code else ""
        host = pod_ip or "127.0.0.1"
        if probe.HasField("tcpSocket"):
            port = port_of(probe.tcpSocket.port, container)
            _, w = await asyncio.wait_for(asyncio.open_connection(probe.tcpSocket.host or host, port), timeout)
            w.close()
            return True, ""
        if probe.HasField("httpGet"):
            g = probe.httpGet
            port = port_of(g.port, container)
            r, w = await asyncio.wait_for(asyncio.open_connection(g.host or host, port), timeout)
            headers = "".join(f"{h.name}: {h.value}\r\n" for h in g.httpHeaders)
            w.write(f"GET {g.path or '/'} HTTP/1.0\r\nHost: {g.host or host}:{port}\r\nUser-Agent: kube-probe/1.32\r\n"
                    f"{headers}\r\n".encode())
            await w.drain()
            line = await asyncio.wait_for(r.readline(), timeout)
            w.close()
            parts = line.decode(errors="replace").split()
            code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if 200 <= code < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {code}"
    except asyncio.TimeoutError:
        return False, f"probe timed out after {timeout}s"
    except (OSError, ValueError) as e:
        return False, str(e)
    return True, ""


async def step(state: ProbeState, probe: v1.Probe, container: v1.Container, pod_ip: str, exec_fn,
               started_at: float, now: float | None = None) -> bool:
    """Run the probe if its period came; return True when the result changed."""
    now = time.monotonic() if now is None else now
    if now - started_at < probe.initialDelaySeconds or now - state.last_run < (probe.periodSeconds or 10):
        return False
    state.last_run = now
    ok, msg = await run_probe(probe, container, pod_ip, exec_fn)
    before = state.result
    if ok:
        state.successes, state.failures = state.successes + 1, 0
        if state.successes >= (probe.successThreshold or 1):
            state.result = True
    else:
        state.failures, state.successes = state.failures + 1, 0
        state.message = msg
        if state.failures >= (probe.failureThreshold or 3):
            state.result = False
    return state.result != before
