"""Syncing one pod (the kubelet's SyncPod / SyncTerminatingPod): drive the runtime toward
the pod's spec — network sandbox, volumes, images, init containers in order, native
sidecars, app containers with restart policy and backoff, probes — and compute the status
the status manager writes. Level-triggered: every call looks at what runs and does the next
steps; nothing is remembered that the runtime and the API cannot tell again, except backoff
timers and probe counters.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kubelab import meta, quantity
from kubelab.api.v1 import objects_pb2 as v1

from . import prober
from .backoff import Backoff
from .dns import DNSConfigurer
from .podstatus_compute import ContainerView, build_status

log = logging.getLogger("kubelet.sync")

LABEL_UID, LABEL_NAME, LABEL_NS = "kubelab.pod.uid", "kubelab.pod.name", "kubelab.pod.namespace"
LABEL_CONTAINER, LABEL_ATTEMPT = "kubelab.container.name", "kubelab.container.attempt"


def _ts(t) -> str:
    """The runtime's epoch seconds as the API's RFC 3339 (or "")."""
    if not t:
        return ""
    if isinstance(t, str):
        return t
    import datetime as dt
    return meta.rfc3339(dt.datetime.fromtimestamp(t, dt.timezone.utc))


@dataclass
class PodRuntimeState:
    pod_ip: str = ""
    netns_path: str | None = None
    sandbox_ready: bool = False
    resolv_conf: str | None = None  # the pod's /etc/resolv.conf, by its dnsPolicy


class PodSyncer:
    def __init__(self, *, runtime, images, network, recorder, status, root_dir: Path, node_ip: str,
                 backoff: Backoff, pull_backoff: Backoff, insecure_registries=(), dns: DNSConfigurer | None = None):
        self.runtime, self.images, self.network = runtime, images, network
        self.dns = dns or DNSConfigurer()
        self.recorder, self.status = recorder, status
        self.root_dir, self.node_ip = Path(root_dir), node_ip
        self.backoff, self.pull_backoff = backoff, pull_backoff
        self.insecure_registries = tuple(insecure_registries)
        self.pods: dict[str, PodRuntimeState] = {}
        self.probes: dict[tuple, prober.ContainerProbes] = {}
        self.waiting: dict[tuple, tuple[str, str]] = {}  # (uid, container) -> (reason, message)
        self.inflight: dict[str, set[asyncio.Task]] = {}  # uid -> runtime calls a cancelled sync left running

    async def _uncut(self, uid: str, call):
        """A runtime call that a cancelled sync must not cut in half (a runc create or start
        killed midway can leave a container that runc knows and the runtime does not): it runs to
        the end, and terminate() waits for it, so it finds the container the call made."""
        t = asyncio.ensure_future(call)
        self.inflight.setdefault(uid, set()).add(t)
        t.add_done_callback(lambda _: self.inflight.get(uid, set()).discard(t))
        return await asyncio.shield(t)

    # -- the runtime's view --
    async def containers_of(self, uid: str) -> dict[str, list]:
        """Container name -> this pod's containers, newest attempt first."""
        out: dict[str, list] = {}
        for c in await self.runtime.list():
            if c.labels.get(LABEL_UID) == uid:
                out.setdefault(c.labels.get(LABEL_CONTAINER, ""), []).append(c)
        for lst in out.values():
            lst.sort(key=lambda c: int(c.labels.get(LABEL_ATTEMPT, "0")), reverse=True)
        return out

    def view(self, uid: str, name: str, attempts: list) -> ContainerView:
        v = ContainerView(name)
        reason, message = self.waiting.get((uid, name), ("", ""))
        if attempts:
            c = attempts[0]
            v.state = c.state if c.state in ("created", "running", "exited") else "exited"
            v.exit_code, v.reason = c.exit_code or 0, c.reason
            v.started_at, v.finished_at = _ts(c.started_at), _ts(c.finished_at)
            v.container_id, v.image = f"runc://{c.id}", c.image
            v.restart_count = int(c.labels.get(LABEL_ATTEMPT, "0"))
            if len(attempts) > 1:
                v.last = self.view(uid, name, attempts[1:2])
                v.last.waiting_reason = ""
            probes = self.probes.get((uid, name))
            v.started = v.state == "running" and (probes is None or probes.startup.result is not False)
            v.ready = v.state == "running" and (probes is None or probes.readiness.result is not False)
        v.waiting_reason, v.waiting_message = reason, message
        return v

    # -- sync --
    async def sync(self, pod: v1.Pod) -> float | None:
        """One sync pass; returns seconds until the pod wants another look (None: on change only)."""
        uid = pod.metadata.uid
        state = self.pods.setdefault(uid, PodRuntimeState())
        if pod.status.phase in ("Succeeded", "Failed") and not await self._any_running(uid):
            return None
        if not state.sandbox_ready:
            await self._sandbox(pod, state)
        self._volumes(pod)
        by_name = await self.containers_of(uid)
        for attempts in by_name.values():
            for c in attempts:
                if c.state == "unknown":  # runc lost it (a reboot): remove, the next pass recreates it
                    await self.runtime.remove(c.id)
        by_name = await self.containers_of(uid)
        again: list[float] = [10.0]
        init_done = True
        for c in pod.spec.initContainers:
            attempts = by_name.get(c.name, [])
            if c.restartPolicy == "Always":  # native sidecar: start it and move on
                again.append(await self._keep(pod, c, attempts, state, always=True))
                continue
            latest = attempts[0] if attempts else None
            if latest is not None and latest.state == "exited" and (latest.exit_code or 0) == 0:
                continue
            init_done = False
            if latest is None or latest.state == "exited":
                if latest is not None and pod.spec.restartPolicy == "Never":
                    break  # a failed init container and no restarts: the pod has failed
                again.append(await self._start(pod, c, attempts, state))
            elif latest.state == "created":
                await self._uncut(uid, self.runtime.start(latest.id))
            break  # init containers run one at a time, in order
        if init_done:
            # create every app container first, then start them together: the heavy part of
            # a start (runc create, the monitor) is then over before any app process runs
            created: list = []
            for c in pod.spec.containers:
                again.append(await self._keep(pod, c, by_name.get(c.name, []), state,
                                              always=pod.spec.restartPolicy == "Always", defer=created))
            for c, cid in created:
                await self._run(pod, c, cid)
        by_name = await self.containers_of(uid)
        views = {c.name: self.view(uid, c.name, by_name.get(c.name, []))
                 for c in list(pod.spec.initContainers) + list(pod.spec.containers)}
        st = build_status(pod, views, init_done=init_done, pod_ip=state.pod_ip, host_ip=self.node_ip,
                          now=meta.rfc3339(), sandbox_ready=state.sandbox_ready)
        self.status.set(pod, st)
        await self._prune(by_name)
        return max(0.5, min(again))

    async def _any_running(self, uid: str) -> bool:
        return any(c.state == "running" for cs in (await self.containers_of(uid)).values() for c in cs)

    async def _sandbox(self, pod: v1.Pod, state: PodRuntimeState) -> None:
        if pod.spec.hostNetwork:
            state.pod_ip, state.netns_path = self.node_ip, None
        else:
            net = await self.network.setup_pod(pod.metadata.uid, pod.metadata.name, pod.metadata.namespace)
            state.pod_ip, state.netns_path = net.ip, str(net.netns_path)
        resolv, warnings = self.dns.pod_config(pod)
        state.resolv_conf = resolv.render()
        for reason, message in warnings:
            self.recorder.event(pod, "Warning", reason, message)
        state.sandbox_ready = True

    def pod_dir(self, uid: str) -> Path:
        return self.root_dir / "pods" / uid

    def _volumes(self, pod: v1.Pod) -> None:
        base = self.pod_dir(pod.metadata.uid) / "volumes"
        for vol in pod.spec.volumes:
            if vol.HasField("emptyDir"):
                (base / "empty-dir" / vol.name).mkdir(parents=True, exist_ok=True)
            elif vol.HasField("hostPath") and vol.hostPath.type in ("DirectoryOrCreate",):
                Path(vol.hostPath.path).mkdir(parents=True, exist_ok=True)

    def mounts(self, pod: v1.Pod, c: v1.Container) -> list[tuple[str, str, bool]]:
        vols = {v.name: v for v in pod.spec.volumes}
        out = []
        for m in c.volumeMounts:
            vol = vols[m.name]
            src = (str(self.pod_dir(pod.metadata.uid) / "volumes" / "empty-dir" / vol.name)
                   if vol.HasField("emptyDir") else vol.hostPath.path)
            if m.subPath:
                src = str(Path(src) / m.subPath)
                Path(src).mkdir(parents=True, exist_ok=True)
            out.append((src, m.mountPath, m.readOnly))
        return out

    async def _keep(self, pod, c: v1.Container, attempts: list, state, *, always: bool,
                    defer: list | None = None) -> float:
        """Keep one container going per the restart policy; returns when to look again."""
        uid = pod.metadata.uid
        latest = attempts[0] if attempts else None
        if latest is None:
            return await self._start(pod, c, attempts, state, defer=defer)
        if latest.state == "created":
            await self._uncut(uid, self.runtime.start(latest.id))
            return 1.0
        if latest.state == "running":
            self.waiting.pop((uid, c.name), None)
            return await self._probe(pod, c, latest, state)
        # exited
        policy = "Always" if always else (pod.spec.restartPolicy or "Always")
        failed = (latest.exit_code or 0) != 0
        if policy == "Never" or (policy == "OnFailure" and not failed):
            self.waiting.pop((uid, c.name), None)
            return 10.0
        key = (uid, c.name)
        wait = self.backoff.waiting(key)
        if wait > 0:
            delay = self.backoff.delay(key)
            if self.waiting.get(key, ("",))[0] != "CrashLoopBackOff":
                self.recorder.event(pod, "Warning", "BackOff",
                                    f"Back-off restarting failed container {c.name} in pod {pod.metadata.name}")
            self.waiting[key] = ("CrashLoopBackOff", f"back-off {delay:.0f}s restarting failed container={c.name} "
                                 f"pod={pod.metadata.name}_{pod.metadata.namespace}({uid})")
            return wait
        return await self._start(pod, c, attempts, state, defer=defer)

    async def _start(self, pod, c: v1.Container, attempts: list, state, *, defer: list | None = None) -> float:
        """Create the container's next attempt and start it (or leave the start to the caller)."""
        uid = pod.metadata.uid
        key = (uid, c.name)
        if self.pull_backoff.waiting(key) > 0:
            if self.waiting.get(key, ("",))[0] != "ImagePullBackOff":
                self.recorder.event(pod, "Normal", "BackOff", f'Back-off pulling image "{c.image}"')
            self.waiting[key] = ("ImagePullBackOff", f'Back-off pulling image "{c.image}"')
            return self.pull_backoff.waiting(key)
        if not await self._ensure_image(pod, c):
            return self.pull_backoff.waiting(key) or 1.0
        attempt = (int(attempts[0].labels.get(LABEL_ATTEMPT, "0")) + 1) if attempts else 0
        if attempts:
            self.backoff.next(key)  # the next restart after this one waits longer
        log_path = self.pod_dir(uid) / "logs" / c.name / f"{attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            cid = await self._uncut(uid, self.runtime.create(self.spec(pod, c, attempt, state, log_path)))
        except Exception as e:  # noqa: BLE001 - a bad command or mount is the pod's problem only
            self.waiting[key] = ("CreateContainerError", str(e))
            self.recorder.event(pod, "Warning", "Failed", f"Error: {e}")
            self.backoff.next(key)
            return self.backoff.waiting(key)
        self.recorder.event(pod, "Normal", "Created", f"Created container {c.name}")
        if defer is not None:
            defer.append((c, cid))
            return 1.0
        return await self._run(pod, c, cid)

    async def _run(self, pod, c: v1.Container, cid: str) -> float:
        key = (pod.metadata.uid, c.name)
        try:
            await self._uncut(pod.metadata.uid, self.runtime.start(cid))
        except Exception as e:  # noqa: BLE001
            self.waiting[key] = ("RunContainerError", str(e))
            self.recorder.event(pod, "Warning", "Failed", f"Error: failed to start container {c.name}: {e}")
            return 1.0
        self.waiting.pop(key, None)
        self.probes[key] = self.fresh_probes(c)
        self.recorder.event(pod, "Normal", "Started", f"Started container {c.name}")
        return 1.0

    async def _ensure_image(self, pod, c: v1.Container) -> bool:
        key = (pod.metadata.uid, c.name)
        present = await self.images.status(c.image) is not None
        policy = c.imagePullPolicy or "IfNotPresent"
        if policy == "Never" and not present:
            self.waiting[key] = ("ErrImageNeverPull", f'Container image "{c.image}" is not present with pull policy of Never')
            self.recorder.event(pod, "Warning", "ErrImageNeverPull", self.waiting[key][1])
            return False
        if present and policy != "Always":
            return True
        self.recorder.event(pod, "Normal", "Pulling", f'Pulling image "{c.image}"')
        t0 = time.monotonic()
        try:
            await self.images.pull(c.image, insecure_registries=self.insecure_registries)
        except Exception as e:  # noqa: BLE001 - ImagePullError and friends
            if present:
                return True  # keep using what we have, as the kubelet does when a re-pull fails
            self.pull_backoff.next(key)
            self.waiting[key] = ("ErrImagePull", f"failed to pull image \"{c.image}\": {e}")
            self.recorder.event(pod, "Warning", "Failed", f'Failed to pull image "{c.image}": {e}')
            return False
        self.pull_backoff.reset(key)
        self.recorder.event(pod, "Normal", "Pulled", f'Successfully pulled image "{c.image}" in '
                                                     f"{time.monotonic() - t0:.3f}s")
        return True

    def spec(self, pod, c: v1.Container, attempt: int, state, log_path: Path):
        from worker.runtime.runtime import ContainerSpec
        limits = c.resources.limits
        return ContainerSpec(
            pod_uid=pod.metadata.uid, pod_name=pod.metadata.name, namespace=pod.metadata.namespace,
            container_name=c.name, attempt=attempt, image=c.image, command=list(c.command), args=list(c.args),
            env={e.name: e.value for e in c.env}, working_dir=c.workingDir, netns_path=state.netns_path,
            mounts=self.mounts(pod, c),
            cpu_millis=quantity.milli(limits["cpu"]) if "cpu" in limits else None,
            memory_bytes=quantity.value(limits["memory"]) if "memory" in limits else None,
            log_path=str(log_path), pod_ip=state.pod_ip or None, privileged=c.securityContext.privileged,
            resolv_conf=state.resolv_conf, stdin=c.stdin, stdin_once=c.stdinOnce, tty=c.tty,
            labels={LABEL_UID: pod.metadata.uid, LABEL_NAME: pod.metadata.name, LABEL_NS: pod.metadata.namespace,
                    LABEL_CONTAINER: c.name, LABEL_ATTEMPT: str(attempt)})

    @staticmethod
    def fresh_probes(c: v1.Container) -> prober.ContainerProbes:
        """A container with a readiness (startup) probe is not ready (started) until it passes."""
        p = prober.ContainerProbes()
        if c.HasField("readinessProbe"):
            p.readiness.result = False
        if c.HasField("startupProbe"):
            p.startup.result = False
        return p

    async def _probe(self, pod, c: v1.Container, running, state) -> float:
        key = (pod.metadata.uid, c.name)
        probes = self.probes.get(key)
        if probes is None:  # adopted after a kubelet restart: probe from scratch
            probes = self.probes[key] = self.fresh_probes(c)
        started_at = running.started_at if isinstance(running.started_at, (int, float)) and running.started_at \
            else (meta.parse_time(str(running.started_at or "")) or meta.now()).timestamp()
        started_mono = time.monotonic() - max(0.0, time.time() - started_at)

        async def exec_fn(cmd):
            return await self.exec_capture(running.id, cmd)
        if c.HasField("startupProbe") and probes.startup.result is not True:
            await prober.step(probes.startup, c.startupProbe, c, state.pod_ip, exec_fn, started_mono)
            if probes.startup.failures >= (c.startupProbe.failureThreshold or 3):
                return await self._unhealthy(pod, c, running, "Startup", probes.startup.message)
            return 1.0
        if c.HasField("livenessProbe"):
            await prober.step(probes.liveness, c.livenessProbe, c, state.pod_ip, exec_fn, started_mono)
            if probes.liveness.result is False:
                return await self._unhealthy(pod, c, running, "Liveness", probes.liveness.message)
        if c.HasField("readinessProbe"):
            changed = await prober.step(probes.readiness, c.readinessProbe, c, state.pod_ip, exec_fn, started_mono)
            if changed and probes.readiness.result is False:
                self.recorder.event(pod, "Warning", "Unhealthy", f"Readiness probe failed: {probes.readiness.message}")
        elif probes.readiness.result is None:
            probes.readiness.result = True
        periods = [p.periodSeconds or 10 for p in (c.livenessProbe, c.readinessProbe) if p.ListFields()]
        return min(periods + [10.0])

    async def _unhealthy(self, pod, c, running, which: str, message: str) -> float:
        self.recorder.event(pod, "Warning", "Unhealthy", f"{which} probe failed: {message}")
        self.recorder.event(pod, "Normal", "Killing",
                            f"Container {c.name} failed {which.lower()} probe, will be restarted")
        self.probes[(pod.metadata.uid, c.name)] = self.fresh_probes(c)
        await self.runtime.stop(running.id, self.grace(pod))
        return 0.5

    async def exec_capture(self, cid: str, cmd: list[str]) -> tuple[int, str]:
        rc, out, err = await self.runtime.exec_sync(cid, cmd)
        text = (out or b"") + (err or b"")
        return rc, (text.decode(errors="replace") if isinstance(text, bytes) else str(text))[-1024:]

    @staticmethod
    def grace(pod: v1.Pod) -> int:
        if pod.metadata.HasField("deletionGracePeriodSeconds") and pod.metadata.deletionTimestamp:
            return pod.metadata.deletionGracePeriodSeconds
        return pod.spec.terminationGracePeriodSeconds if pod.spec.HasField("terminationGracePeriodSeconds") else 30

    async def _prune(self, by_name: dict) -> None:
        """Keep the latest two attempts of each container (the previous one serves logs --previous)."""
        for attempts in by_name.values():
            for old in attempts[2:]:
                if old.state == "exited":
                    await self.runtime.remove(old.id)

    # -- termination --
    async def terminate(self, pod: v1.Pod | None, uid: str, grace: int | None = None) -> None:
        """Stop every container (SIGTERM, then SIGKILL after the grace period), remove them and the
        sandbox. `pod` is None for orphans found in the runtime. Raises when a container could not
        be stopped or removed (the pod worker retries), so a pod is never confirmed gone while one
        of its containers still runs."""
        pending = list(self.inflight.pop(uid, ()))
        if pending:  # a create or start the cancelled sync began: let it finish, then stop what it made
            await asyncio.gather(*pending, return_exceptions=True)
        g = grace if grace is not None else (self.grace(pod) if pod is not None else 0)
        for _ in range(3):  # a pass can find a container that a cancelled sync was still making
            by_name = await self.containers_of(uid)
            if not by_name:
                break
            running = [c for cs in by_name.values() for c in cs if c.state in ("running", "created", "unknown")]
            if pod is not None:
                for c in running:
                    self.recorder.event(pod, "Normal", "Killing", f"Stopping container {c.labels.get(LABEL_CONTAINER)}")
            results = await asyncio.gather(*(self.runtime.stop(c.id, g) for c in running), return_exceptions=True)
            for c, r in zip(running, results):
                if isinstance(r, BaseException):
                    log.warning("stopping container %s of pod %s: %s", c.id[:12], uid, r)
            for cs in by_name.values():
                for c in cs:
                    await self.runtime.remove(c.id)  # kills what stop could not (runc delete --force)
            g = 0
        else:
            left = await self.containers_of(uid)
            if left:
                raise RuntimeError(f"pod {uid}: containers {sorted(left)} still there after terminating")
        await self.runtime.remove_sandbox(uid)
        if pod is None or not pod.spec.hostNetwork:
            await self.network.teardown_pod(uid)
        shutil.rmtree(self.pod_dir(uid) / "volumes", ignore_errors=True)
        self.pods.pop(uid, None)
        for k in [k for k in self.probes if k[0] == uid]:
            del self.probes[k]
        for k in [k for k in self.waiting if k[0] == uid]:
            del self.waiting[k]
        self.backoff.forget_pod(uid)
        self.pull_backoff.forget_pod(uid)
