"""The container runtime's facade: what the kubelet calls (CreateContainer, StartContainer,
StopContainer, RemoveContainer, ContainerStatus, ListContainers, Exec, Attach in CRI's words).

One container = one directory `<root>/containers/<id>/`, which is also its OCI bundle:

    config.json   the runtime spec (bundle.py)
    rootfs/       overlayfs: lower = the image's shared unpacked rootfs, upper/work beside it
    meta.json     written here: the ContainerSpec, labels, image, created/started times, pids
    init.pid, conmon.pid, exits/<id>, ctl   conmon's (conmon.py); runc.log: runc's diagnostics
    exit.json     written here when conmon's exit file first shows up: exit code, finish
                  time, and the memory cgroup's OOM kill count, read before `runc delete`

runc runs the containers; one conmon per container is their parent (subreaper), writes the
log file and the exit code, so containers outlive the kubelet and this process. After a
restart, a new Runtime on the same root lists the directories and adopts what it finds
(list(): runc state, conmon's pid file and exit file). list() also rotates the logs that
outgrew log_max_size of containers whose conmon still writes them (logs.py). The pod
sandbox's IPC/UTS namespaces, /dev/shm and /etc files come from sandbox.py; the network
namespace is the network code's and is only joined.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pty
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator

from . import bundle, cgroups, conmon, mounts
from .attach import AttachProcess, connect as attach_socket
from .images import ImageStore
from .logs import DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE, LogEntry, needs_rotation, read_log_entries, rotate_files
from .proc import CommandError
from .runc import Runc
from .sandbox import Sandbox, SandboxManager

MONITOR_TIMEOUT = 60.0
log = logging.getLogger("runtime")


class ContainerError(Exception):
    """A runtime operation failed; the message is runc's (or ours) and names the container."""


class ContainerNotFound(ContainerError):
    def __init__(self, cid: str):
        self.id = cid
        super().__init__(f'container "{cid}" not found')


class ContainerCreateError(ContainerError):
    pass


@dataclass
class ContainerSpec:
    pod_uid: str
    pod_name: str
    namespace: str
    container_name: str
    image: str
    attempt: int = 0
    command: list[str] = field(default_factory=list)     # replaces the image's entrypoint
    args: list[str] = field(default_factory=list)        # replaces the image's cmd
    env: dict[str, str] = field(default_factory=dict)    # over the image's env
    working_dir: str = ""
    netns_path: str | None = None                        # None: host network (and host UTS)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # (host, container, read_only)
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    log_path: str | None = None                          # None: <container dir>/container.log
    labels: dict[str, str] = field(default_factory=dict)
    pod_ip: str | None = None                            # for the pod's /etc/hosts
    resolv_conf: str | None = None                       # /etc/resolv.conf text; None: the host's
    privileged: bool = False
    stdin: bool = False                                  # attachable stdin (conmon -i)
    stdin_once: bool = False
    tty: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "ContainerSpec":
        d = dict(d)
        d["mounts"] = [tuple(m) for m in d.get("mounts", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ContainerStatus:
    id: str
    state: str                     # created | running | exited | unknown
    pid: int | None
    exit_code: int | None
    started_at: float | None       # seconds since the epoch
    finished_at: float | None
    reason: str                    # Completed | Error | OOMKilled | ""
    image: str
    labels: dict[str, str]
    created_at: float = 0.0
    image_id: str = ""
    message: str = ""
    log_path: str = ""
    spec: ContainerSpec | None = None

    @property
    def name(self) -> str:
        return self.spec.container_name if self.spec else ""

    @property
    def pod_uid(self) -> str:
        return self.spec.pod_uid if self.spec else ""


class Runtime:
    def __init__(self, root_dir: Path, *, runc_root: Path = Path("/run/kubelab/runc"), images: ImageStore,
                 run_dir: Path | None = None, cgroup_parent: str = "/kubelab", runc: str = "runc",
                 conmon: str = "conmon", log_max_size: int = DEFAULT_MAX_SIZE,
                 log_max_files: int = DEFAULT_MAX_FILES):
        self.root = Path(root_dir)
        self.containers_dir = self.root / "containers"
        self.images = images
        self.runc = Runc(runc_root, binary=runc)
        self.conmon = conmon
        self.sandboxes = SandboxManager(Path(run_dir) if run_dir else Path(runc_root).parent)
        self.cgroup_parent = "/" + cgroup_parent.strip("/")
        self.log_max_size, self.log_max_files = log_max_size, log_max_files

    # ---- paths and records ------------------------------------------------------------------

    def _dir(self, cid: str) -> Path:
        if not cid or "/" in cid or cid.startswith("."):
            raise ContainerNotFound(cid)
        return self.containers_dir / cid

    def _meta(self, cid: str) -> dict:
        try:
            return json.loads((self._dir(cid) / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise ContainerNotFound(cid) from None

    def _write_meta(self, cid: str, meta: dict) -> None:
        _write_json(self._dir(cid) / "meta.json", meta)

    def _exit(self, cid: str) -> dict | None:
        """The exit record; made from conmon's exit file the first time it is there."""
        try:
            return json.loads((self._dir(cid) / "exit.json").read_text())
        except (OSError, ValueError):
            pass
        found = conmon.exit_code(conmon.Paths(self._dir(cid), cid))
        if found is None:
            return None
        code, finished = found
        try:
            meta = self._meta(cid)
        except ContainerNotFound:
            return None  # removed meanwhile
        # the cgroup is still there: only `runc delete` (remove) takes it away
        oom = cgroups.oom_kills(meta["cgroup_path"])
        lost = code < 0  # conmon could not get a status
        code = 255 if lost else code
        record = {"exit_code": code, "finished_at": finished, "oom_kills": oom, "lost": lost,
                  "reason": "OOMKilled" if oom else ("Completed" if code == 0 else "Error")}
        try:
            _write_json(self._dir(cid) / "exit.json", record)
        except OSError:
            pass  # removed meanwhile; the record is still right for this caller
        return record

    def logs(self, cid: str) -> Path:
        return Path(self._meta(cid)["log_path"])

    async def version(self) -> str:
        return await self.runc.version()

    # ---- the container lifecycle -------------------------------------------------------------

    async def ensure_sandbox(self, spec: ContainerSpec) -> Sandbox:
        return await self.sandboxes.ensure(spec.pod_uid, spec.pod_name, spec.namespace,
                                           host_network=spec.netns_path is None, pod_ip=spec.pod_ip,
                                           resolv_conf=spec.resolv_conf)

    async def create(self, spec: ContainerSpec) -> str:
        """Make the container's bundle and runc container (state created); return its id."""
        info = self.images.get(spec.image)
        if info is None:
            raise ContainerCreateError(f'image "{spec.image}" is not present on this node')
        if spec.netns_path is not None and not os.path.exists(spec.netns_path):
            raise ContainerCreateError(f"network namespace {spec.netns_path} does not exist")
        image_cfg = self.images.config(spec.image)
        lower = await self.images.rootfs(spec.image)
        sb = await self.ensure_sandbox(spec)
        try:
            argv = bundle.process_args(image_cfg, spec.command, spec.args)
            uid, gid = bundle.resolve_user(image_cfg.user, lower)
        except bundle.SpecError as e:
            raise ContainerCreateError(str(e)) from None

        cid = secrets.token_hex(32)
        cdir = self._dir(cid)
        cgroup_path = f"{self.cgroup_parent}/{spec.pod_uid}/{cid}"
        log_path = Path(spec.log_path) if spec.log_path else cdir / "container.log"
        for sub in ("rootfs", "upper", "work"):
            (cdir / sub).mkdir(parents=True)
        try:
            mounts.mount_overlay(lower, cdir / "upper", cdir / "work", cdir / "rootfs")
            shared = bundle.Shared(ipc_path=sb.ipc, uts_path=sb.uts, netns_path=spec.netns_path, shm_dir=sb.shm,
                                   etc_files={f"/etc/{n}": sb.file(n) for n in ("hostname", "hosts", "resolv.conf")})
            config = bundle.runtime_spec(
                args=argv, env=bundle.process_env(image_cfg, spec.env, sb.hostname),
                cwd=spec.working_dir or image_cfg.working_dir or "/", uid=uid, gid=gid, rootfs=cdir / "rootfs",
                shared=shared, mounts=spec.mounts, cgroups_path=cgroup_path, memory_bytes=spec.memory_bytes,
                cpu_millis=spec.cpu_millis, privileged=spec.privileged, tty=spec.tty,
                annotations={"io.kubernetes.pod.name": spec.pod_name, "io.kubernetes.pod.namespace": spec.namespace,
                             "io.kubernetes.pod.uid": spec.pod_uid, "io.kubernetes.container.name": spec.container_name})
            _write_json(cdir / "config.json", config)
            meta = {"id": cid, "spec": asdict(spec), "labels": spec.labels, "image": info.ref, "image_id": info.id,
                    "image_digest": info.digest, "created_at": time.time(), "started_at": None,
                    "cgroup_path": cgroup_path, "log_path": str(log_path), "pid": None, "monitor_pid": None}
            self._write_meta(cid, meta)
            # a name as the kubelet gives dockershim and CRI-O containers; conmon's cmdline shows it
            name = f"k8s_{spec.container_name}_{spec.pod_name}_{spec.namespace}_{spec.pod_uid}_{spec.attempt}"
            try:
                pid, monitor = await conmon.spawn(self.conmon, conmon.Paths(cdir, cid), runc=self.runc.binary,
                                                  runc_root=self.runc.root, log_path=log_path, name=name,
                                                  timeout=MONITOR_TIMEOUT, stdin=spec.stdin,
                                                  stdin_once=spec.stdin_once, tty=spec.tty)
            except conmon.ConmonError as e:
                raise ContainerCreateError(f'container "{spec.container_name}" of pod '
                                           f'"{spec.namespace}/{spec.pod_name}": {e}') from None
            meta.update(pid=pid, monitor_pid=monitor)
            self._write_meta(cid, meta)
        except BaseException:
            await self._destroy(cid, cgroup_path)
            raise
        return cid

    async def start(self, cid: str) -> None:
        meta = self._meta(cid)
        started = time.time()  # before: a quick process may have exited by the time runc returns
        try:
            await self.runc.start(cid)
        except CommandError as e:
            raise ContainerError(f'starting container "{cid}": {e.message}') from None
        meta["started_at"] = started
        self._write_meta(cid, meta)

    async def stop(self, cid: str, timeout: float = 30.0) -> None:
        """SIGTERM, up to timeout seconds for the container to exit, then SIGKILL."""
        st = await self.status(cid)
        if st.state not in ("created", "running"):
            return
        if timeout > 0 and st.state == "running":
            await self._kill(cid, "TERM")
            if await self._wait_exit(cid, timeout):
                return
        await self._kill(cid, "KILL")
        if not await self._wait_exit(cid, 10.0):
            raise ContainerError(f'container "{cid}" did not exit after SIGKILL')

    async def _kill(self, cid: str, sig: str) -> None:
        try:
            await self.runc.kill(cid, sig)
        except CommandError as e:  # already gone between status and kill: that is what we want
            if "not running" not in e.message and "does not exist" not in e.message and "finished" not in e.message:
                raise ContainerError(f'signalling container "{cid}": {e.message}') from None

    async def _wait_exit(self, cid: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._exit(cid) is not None:
                return True
            meta = self._meta(cid)
            if not conmon.alive(meta.get("monitor_pid"), cid):
                # nobody will write exit.json: ask runc instead
                if (await self.runc.state(cid) or {}).get("status") in (None, "stopped"):
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def remove(self, cid: str) -> None:
        """Delete the container (killing it if needed), its overlay, bundle and cgroup."""
        try:
            meta = self._meta(cid)
        except ContainerNotFound:
            return
        try:
            await self.runc.delete(cid)
        except CommandError as e:
            raise ContainerError(f'removing container "{cid}": {e.message}') from None
        await self._wait_exit(cid, 5.0)
        await self._destroy(cid, meta["cgroup_path"])

    async def _destroy(self, cid: str, cgroup_path: str) -> None:
        cdir = self._dir(cid)
        try:
            await self.runc.delete(cid)
        except CommandError:
            pass
        mounts.umount_all(cdir / "rootfs")
        shutil.rmtree(cdir, ignore_errors=True)
        await asyncio.to_thread(cgroups.remove, cgroup_path)

    async def list_sandboxes(self) -> list[str]:
        """sandbox_uids() as a coroutine, the shape the kubelet calls (remote runtimes need a round trip)."""
        return self.sandbox_uids()

    def sandbox_uids(self) -> list[str]:
        """Pods that still have a sandbox here (pins, shm), with or without containers."""
        d = self.sandboxes.dir
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    async def remove_sandbox(self, pod_uid: str) -> None:
        """The pod is gone: remove its remaining containers, namespace pins, shm and cgroup."""
        for st in await self.list():
            if st.pod_uid == pod_uid:
                await self.remove(st.id)
        await self.sandboxes.remove(pod_uid)
        await asyncio.to_thread(cgroups.remove, f"{self.cgroup_parent}/{pod_uid}")

    # ---- status ----------------------------------------------------------------------------

    async def status(self, cid: str) -> ContainerStatus:
        meta = self._meta(cid)
        return await self._status(cid, meta, await self.runc.state(cid))

    async def list(self) -> list[ContainerStatus]:
        """Every container under the root (what a restarted kubelet adopts)."""
        if not self.containers_dir.exists():
            return []
        states = await self.runc.list()
        out = []
        for d in sorted(self.containers_dir.iterdir()):
            try:
                meta = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                continue  # a container being created or removed right now
            st = await self._status(d.name, meta, states.get(d.name))
            self._rotate_log(st.id, meta)  # a no-op once conmon is gone (the container exited)
            out.append(st)
        return out

    def _rotate_log(self, cid: str, meta: dict) -> bool:
        """Rotate the container's log if it outgrew log_max_size, as the kubelet's container
        log manager does with CRI-O: move the files along, then conmon reopens the live one."""
        path = Path(meta["log_path"])
        try:
            if not needs_rotation(path, self.log_max_size):
                return False
            return conmon.reopen_log(conmon.Paths(self._dir(cid), cid), lambda: rotate_files(path, self.log_max_files))
        except OSError as e:  # a log dir gone or read-only must not fail the relist
            log.warning("rotating the log of container %s: %s", cid, e)
            return False

    async def _status(self, cid: str, meta: dict, runc_state: dict | None) -> ContainerStatus:
        spec = ContainerSpec.from_dict(meta["spec"])
        st = ContainerStatus(id=cid, state="unknown", pid=meta.get("pid"), exit_code=None,
                             started_at=meta.get("started_at"), finished_at=None, reason="", image=meta["image"],
                             labels=meta.get("labels", {}), created_at=meta.get("created_at", 0.0),
                             image_id=meta.get("image_id", ""), log_path=meta.get("log_path", ""), spec=spec)
        ex = self._exit(cid)
        runc_status = (runc_state or {}).get("status")
        if ex is None and runc_status in ("stopped", None) and meta.get("pid"):
            # init is gone; conmon is about to write its exit file, unless it is dead too
            if conmon.alive(meta.get("monitor_pid"), cid):
                for _ in range(40):
                    await asyncio.sleep(0.05)
                    ex = self._exit(cid)
                    if ex is not None:
                        break
        if ex is not None:
            st.state, st.exit_code, st.finished_at, st.reason = "exited", ex["exit_code"], ex["finished_at"], ex["reason"]
            if ex.get("lost"):
                st.message = "the container's exit status was lost"
            return st
        if runc_status == "created":
            st.state = "created"
        elif runc_status in ("running", "paused", "pausing"):
            st.state = "running"
        elif runc_status == "stopped":
            st.state, st.exit_code, st.reason = "exited", 255, "Error"
            st.message = "the container's monitor died: exit code unknown"
        else:
            st.message = "runc does not know this container (was the node restarted?)"
        return st

    # ---- exec and logs -----------------------------------------------------------------------

    async def exec(self, cid: str, cmd: list[str], *, tty: bool = False,
                   stdin: bool = False) -> "ExecProcess":
        """Run cmd in the container (`runc exec`). Without tty: stdout/stderr (and stdin when
        asked) are pipes. With tty: one pseudo-terminal; proc.stdout reads it and proc.stdin
        writes to it (stderr is merged, as with a terminal); runc relays it into the container."""
        self._meta(cid)
        pid_file = self._dir(cid) / f"exec-{secrets.token_hex(6)}.pid"
        argv = self.runc.exec_argv(cid, cmd, tty=tty, pid_file=str(pid_file))
        if not tty:
            return ExecProcess(await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE), pid_file)
        master, slave = pty.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave,
                                                        start_new_session=True)
        finally:
            os.close(slave)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: _PtyReader(reader), os.fdopen(os.dup(master), "rb", buffering=0))
        wtransport, wproto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                           os.fdopen(master, "wb", buffering=0))
        proc.stdout = reader
        proc.stdin = asyncio.StreamWriter(wtransport, wproto, None, loop)
        return ExecProcess(proc, pid_file)

    async def attach(self, cid: str, *, stdin: bool = False) -> AttachProcess:
        """The container's own output from now on, and its stdin when asked (conmon's attach
        socket, attach.py). ContainerError when it was not created with stdin or has ended."""
        meta = self._meta(cid)
        spec = meta.get("spec") or {}
        if stdin and not spec.get("stdin"):
            raise ContainerError(f'container "{spec.get("container_name", cid)}" was not created with stdin '
                                 "(stdin: true in its spec): attach without stdin")
        if self._exit(cid) is not None:
            raise ContainerError(f'cannot attach to container "{spec.get("container_name", cid)}": it has exited')
        p = conmon.Paths(self._dir(cid), cid)
        try:
            sock = await attach_socket(p.attach)
        except OSError as e:
            raise ContainerError(f'cannot attach to container "{spec.get("container_name", cid)}": {e}') from None
        return AttachProcess(sock, stdin=stdin, tty=bool(spec.get("tty")),
                             exit_code=lambda: (self._exit(cid) or {}).get("exit_code"))

    async def exec_sync(self, cid: str, cmd: list[str], *, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run cmd to completion (exec probes): (exit code, stdout, stderr)."""
        proc = await self.exec(cid, cmd)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return proc.returncode, out, err

    async def read_logs(self, cid: str, *, tail: int | None = None, follow: bool = False) -> AsyncIterator[str]:
        """The container's log lines; with follow, until the container has exited."""
        async for e in self.read_log_entries(cid, tail=tail, follow=follow):
            yield e.text

    async def read_log_entries(self, cid: str, *, tail: int | None = None,
                               follow: bool = False) -> AsyncIterator[LogEntry]:
        """The same lines with their time and stream (for logs --timestamps and --since)."""
        path = self.logs(cid)
        async for e in read_log_entries(path, tail=tail, follow=follow,
                                        stop=lambda: self._exit(cid) is not None or not self._dir(cid).exists()):
            yield e


class ExecProcess:
    """A `runc exec` (its pipes, wait, returncode) whose kill() also kills the process runc
    started in the container: runc passes on the signals it can catch, but SIGKILL ends runc
    alone and the command would run on (an exec whose client went away, a timed-out probe).
    runc wrote that process's host pid to pid_file."""

    def __init__(self, proc: asyncio.subprocess.Process, pid_file: Path):
        self._proc, self.pid_file = proc, pid_file

    def __getattr__(self, name):
        return getattr(self._proc, name)

    def kill(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and self._proc.returncode is None:  # runc still waits on it: the pid is its
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self._proc.kill()

    async def wait(self) -> int:
        try:
            return await self._proc.wait()
        finally:
            self.pid_file.unlink(missing_ok=True)

    async def communicate(self, input=None):
        try:
            return await self._proc.communicate(input)
        finally:
            self.pid_file.unlink(missing_ok=True)


class _PtyReader(asyncio.StreamReaderProtocol):
    def connection_lost(self, exc):  # EIO is how a pty master says the other side closed
        if isinstance(exc, OSError) and exc.errno == 5:
            exc = None
        super().connection_lost(exc)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
