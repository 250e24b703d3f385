"""The kubelet's side of `kubelab runtime` (server.py): RemoteRuntime and RemoteImageStore have
the methods of Runtime and ImageStore that the kubelet uses, with the same signatures, return
types and exceptions, but every call is a gRPC call on the runtime's unix socket.

Three methods are synchronous in the in-process classes and stay synchronous here:
ImageStore.get() and .list() and Runtime.sandbox_uids(). They make a blocking unary call on a
second, synchronous channel to the same socket (a local socket answers in about a millisecond;
the call gives up after SYNC_TIMEOUT seconds). Everything else uses grpc.aio.

Errors come back as gRPC status codes, with the runtime's exception class named in the
trailing metadata `kubelab-error`; the client raises the same class again (ContainerNotFound,
ContainerCreateError, ImageNotFound, ImagePullError...), so callers cannot tell the difference.
This module also holds the conversions between the dataclasses and the messages, which the
server shares.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable

import grpc

from kubelab.runtime.v1 import runtime_pb2 as pb
from kubelab.runtime.v1 import runtime_pb2_grpc as pb_grpc

from .images import ImageError, ImageImportError, ImageInfo, ImageNotFound, ImagePullError
from .logs import LogEntry
from .refs import InvalidReference
from .runtime import ContainerCreateError, ContainerError, ContainerNotFound, ContainerSpec, ContainerStatus

ERROR_KEY = "kubelab-error"
SYNC_TIMEOUT = 10.0


# ---- conversions (shared with server.py) -------------------------------------------------------

def _opt(msg, name: str):
    return getattr(msg, name) if msg.HasField(name) else None


def spec_to_pb(s: ContainerSpec) -> pb.ContainerSpec:
    m = pb.ContainerSpec(
        pod_uid=s.pod_uid, pod_name=s.pod_name, namespace=s.namespace, container_name=s.container_name,
        image=s.image, attempt=s.attempt, command=s.command, args=s.args, env=s.env, working_dir=s.working_dir,
        mounts=[pb.Mount(host_path=h, container_path=c, read_only=bool(ro)) for h, c, ro in s.mounts],
        labels=s.labels, privileged=s.privileged, stdin=s.stdin, stdin_once=s.stdin_once, tty=s.tty)
    for name in ("netns_path", "cpu_millis", "memory_bytes", "log_path", "pod_ip", "resolv_conf"):
        value = getattr(s, name)
        if value is not None:
            setattr(m, name, value)
    return m


def spec_from_pb(m: pb.ContainerSpec) -> ContainerSpec:
    return ContainerSpec(
        pod_uid=m.pod_uid, pod_name=m.pod_name, namespace=m.namespace, container_name=m.container_name,
        image=m.image, attempt=m.attempt, command=list(m.command), args=list(m.args), env=dict(m.env),
        working_dir=m.working_dir, netns_path=_opt(m, "netns_path"),
        mounts=[(x.host_path, x.container_path, x.read_only) for x in m.mounts],
        cpu_millis=_opt(m, "cpu_millis"), memory_bytes=_opt(m, "memory_bytes"), log_path=_opt(m, "log_path"),
        labels=dict(m.labels), pod_ip=_opt(m, "pod_ip"), resolv_conf=_opt(m, "resolv_conf"),
        privileged=m.privileged, stdin=m.stdin, stdin_once=m.stdin_once, tty=m.tty)


def status_to_pb(s: ContainerStatus) -> pb.ContainerStatus:
    m = pb.ContainerStatus(id=s.id, state=s.state, reason=s.reason, image=s.image, labels=s.labels,
                           created_at=s.created_at or 0.0, image_id=s.image_id, message=s.message,
                           log_path=s.log_path)
    for name in ("pid", "exit_code", "started_at", "finished_at"):
        value = getattr(s, name)
        if value is not None:
            setattr(m, name, value)
    if s.spec is not None:
        m.spec.CopyFrom(spec_to_pb(s.spec))
    return m


def status_from_pb(m: pb.ContainerStatus) -> ContainerStatus:
    return ContainerStatus(
        id=m.id, state=m.state, pid=_opt(m, "pid"), exit_code=_opt(m, "exit_code"),
        started_at=_opt(m, "started_at"), finished_at=_opt(m, "finished_at"), reason=m.reason, image=m.image,
        labels=dict(m.labels), created_at=m.created_at, image_id=m.image_id, message=m.message,
        log_path=m.log_path, spec=spec_from_pb(m.spec) if m.HasField("spec") else None)


def image_to_pb(i: ImageInfo) -> pb.Image:
    return pb.Image(ref=i.ref, digest=i.digest, id=i.id, size=i.size)


def image_from_pb(m: pb.Image) -> ImageInfo:
    return ImageInfo(ref=m.ref, digest=m.digest, id=m.id, size=m.size)


# ---- errors -----------------------------------------------------------------------------------

def error_code(e: BaseException) -> grpc.StatusCode:
    """The status code of one of the runtime's exceptions (never UNAVAILABLE: that one means
    the runtime itself cannot be reached)."""
    if isinstance(e, (ContainerNotFound, ImageNotFound)):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, (InvalidReference, ImageImportError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(e, (ContainerError, ImageError)):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


def error_metadata(e: BaseException) -> tuple:
    md = [(ERROR_KEY, type(e).__name__)]
    if isinstance(e, (ContainerNotFound,)):
        md.append(("kubelab-id", e.id))
    if isinstance(e, (ImageNotFound, ImagePullError)):
        md.append(("kubelab-ref", e.ref))
    return tuple(md)


def _md(err: grpc.RpcError) -> dict[str, str]:
    try:
        return {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}
    except Exception:  # noqa: BLE001
        return {}


def from_rpc_error(err: grpc.RpcError) -> Exception:
    """The runtime's exception again, from a failed call."""
    md, msg = _md(err), err.details() or ""
    kind = md.get(ERROR_KEY, "")
    if kind == "ContainerNotFound":
        return ContainerNotFound(md.get("kubelab-id", ""))
    if kind == "ImageNotFound":
        return ImageNotFound(md.get("kubelab-ref", ""))
    if kind == "ImagePullError":
        ref = md.get("kubelab-ref", "")
        prefix = f'failed to pull image "{ref}": '
        return ImagePullError(ref, msg.removeprefix(prefix))
    if kind == "TimeoutError" or err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(msg)
    simple = {"ContainerCreateError": ContainerCreateError, "ContainerError": ContainerError,
              "ImageImportError": ImageImportError, "ImageError": ImageError, "InvalidReference": InvalidReference}
    if kind in simple:
        return simple[kind](msg)
    return ContainerError(f"container runtime: {err.code().name}: {msg}")


async def _call(coro):
    try:
        return await coro
    except grpc.aio.AioRpcError as e:
        raise from_rpc_error(e) from None


def _address(endpoint: str) -> str:
    """unix:///run/x.sock, unix:/run/x.sock or a bare path -> the gRPC target."""
    if endpoint.startswith("unix:"):
        return endpoint
    if endpoint.startswith("/"):
        return "unix://" + endpoint
    return endpoint


class _Channels:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.target = _address(endpoint)
        self._aio: grpc.aio.Channel | None = None
        self._sync: grpc.Channel | None = None

    def aio(self) -> grpc.aio.Channel:
        if self._aio is None:  # made lazily: grpc.aio channels belong to the running loop
            self._aio = grpc.aio.insecure_channel(self.target)
        return self._aio

    def sync(self) -> grpc.Channel:
        if self._sync is None:
            self._sync = grpc.insecure_channel(self.target)
        return self._sync

    async def close(self) -> None:
        if self._aio is not None:
            await self._aio.close()
            self._aio = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None


# ---- the runtime ------------------------------------------------------------------------------

class RemoteRuntime:
    """Runtime's interface over `kubelab runtime`'s RuntimeService."""

    def __init__(self, endpoint: str):
        self._ch = _Channels(endpoint)
        self.endpoint = endpoint

    @property
    def _stub(self) -> pb_grpc.RuntimeServiceStub:
        return pb_grpc.RuntimeServiceStub(self._ch.aio())

    async def close(self) -> None:
        await self._ch.close()

    async def version(self) -> str:
        return (await _call(self._stub.Version(pb.VersionRequest()))).runtime_version

    async def create(self, spec: ContainerSpec) -> str:
        return (await _call(self._stub.CreateContainer(pb.CreateContainerRequest(spec=spec_to_pb(spec))))).id

    async def start(self, cid: str) -> None:
        await _call(self._stub.StartContainer(pb.ContainerRequest(id=cid)))

    async def stop(self, cid: str, timeout: float = 30.0) -> None:
        await _call(self._stub.StopContainer(pb.StopContainerRequest(id=cid, timeout=timeout)))

    async def remove(self, cid: str) -> None:
        await _call(self._stub.RemoveContainer(pb.ContainerRequest(id=cid)))

    async def status(self, cid: str) -> ContainerStatus:
        return status_from_pb((await _call(self._stub.ContainerStatus(pb.ContainerRequest(id=cid)))).status)

    async def list(self) -> list[ContainerStatus]:
        resp = await _call(self._stub.ListContainers(pb.ListContainersRequest()))
        return [status_from_pb(m) for m in resp.containers]

    def sandbox_uids(self) -> list[str]:
        """Synchronous, as Runtime's: a blocking call on the local socket."""
        stub = pb_grpc.RuntimeServiceStub(self._ch.sync())
        try:
            return list(stub.ListPodSandboxes(pb.ListPodSandboxesRequest(), timeout=SYNC_TIMEOUT).pod_uids)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def list_sandboxes(self) -> list[str]:
        """sandbox_uids() without blocking the caller's event loop: what the kubelet uses."""
        return list((await _call(self._stub.ListPodSandboxes(pb.ListPodSandboxesRequest()))).pod_uids)

    async def remove_sandbox(self, pod_uid: str) -> None:
        await _call(self._stub.RemovePodSandbox(pb.PodSandboxRequest(pod_uid=pod_uid)))

    async def exec_sync(self, cid: str, cmd: list[str], *, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        req = pb.ExecSyncRequest(id=cid, cmd=cmd)
        if timeout is not None:
            req.timeout = timeout
        resp = await _call(self._stub.ExecSync(req))
        return resp.exit_code, resp.stdout, resp.stderr

    async def exec(self, cid: str, cmd: list[str], *, tty: bool = False, stdin: bool = False) -> "RemoteProcess":
        """Like Runtime.exec: an object with asyncio.subprocess.Process's stdout, stderr (None
        with tty), stdin (None unless stdin or tty), wait(), returncode and kill()."""
        return await self._stream(self._stub.Exec(), pb.ExecStart(id=cid, cmd=cmd, tty=tty, stdin=stdin), "exec")

    async def attach(self, cid: str, *, stdin: bool = False) -> "RemoteProcess":
        """Like Runtime.attach (the container's own stdio); kill() detaches. A tty container's
        output all comes as stdout."""
        return await self._stream(self._stub.Attach(), pb.ExecStart(id=cid, stdin=stdin), "attach")

    async def _stream(self, call, start: pb.ExecStart, what: str) -> "RemoteProcess":
        try:
            await call.write(pb.ExecRequest(start=start))
            first = await call.read()
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        if first is grpc.aio.EOF:
            code = await call.code()
            raise ContainerError(f"container runtime: {what} ended before it started ({code.name})")
        proc = RemoteProcess(call, tty=start.tty, stdin=start.stdin)
        proc._start()
        return proc

    async def read_logs(self, cid: str, *, tail: int | None = None, follow: bool = False) -> AsyncIterator[str]:
        async for e in self.read_log_entries(cid, tail=tail, follow=follow):
            yield e.text

    async def read_log_entries(self, cid: str, *, tail: int | None = None,
                               follow: bool = False) -> AsyncIterator[LogEntry]:
        req = pb.ContainerLogsRequest(id=cid, follow=follow)
        if tail is not None:
            req.tail = tail
        call = self._stub.ContainerLogs(req)
        try:
            async for m in call:
                yield LogEntry(m.time, m.stream, m.line)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()


class _StdinWriter:
    """proc.stdin: write() queues, drain() waits until the queue went out, close() sends
    stdin_close once everything before it is sent."""

    def __init__(self, call):
        self._call = call
        self._queue: asyncio.Queue = asyncio.Queue()
        self._closed = False
        self._task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._call.write(msg)
            except Exception:  # noqa: BLE001 - the stream ended: nothing more to deliver
                pass
            finally:
                self._queue.task_done()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("stdin is closed")
        if data:
            self._queue.put_nowait(pb.ExecRequest(stdin=bytes(data)))

    async def drain(self) -> None:
        await self._queue.join()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(pb.ExecRequest(stdin_close=True))

    def is_closing(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await self._queue.join()

    def _cancel(self) -> None:
        self._task.cancel()


class RemoteProcess:
    """The part of asyncio.subprocess.Process that exec's users touch, over one Exec stream."""

    def __init__(self, call, *, tty: bool, stdin: bool):
        self._call = call
        self.stdout = asyncio.StreamReader()
        self.stderr = None if tty else asyncio.StreamReader()
        self.stdin = _StdinWriter(call) if (stdin or tty) else None
        self.returncode: int | None = None
        self.pid = None
        self._reader: asyncio.Task | None = None

    def _start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                m = await self._call.read()
                if m is grpc.aio.EOF:
                    break
                kind = m.WhichOneof("msg")
                if kind == "stdout":
                    self.stdout.feed_data(m.stdout)
                elif kind == "stderr" and self.stderr is not None:
                    self.stderr.feed_data(m.stderr)
                elif kind == "exit_code":
                    self.returncode = m.exit_code
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            if self.returncode is None:
                self.returncode = -9  # killed, or the stream broke: as a SIGKILLed process reports
            self.stdout.feed_eof()
            if self.stderr is not None:
                self.stderr.feed_eof()
            if self.stdin is not None:
                self.stdin._cancel()

    async def wait(self) -> int:
        await asyncio.shield(self._reader)
        return self.returncode

    async def communicate(self, input: bytes | None = None) -> tuple[bytes, bytes | None]:
        if input and self.stdin is not None:
            self.stdin.write(input)
        if self.stdin is not None:
            self.stdin.close()
        out, err = await asyncio.gather(self.stdout.read(), self.stderr.read() if self.stderr else _none())
        await self.wait()
        return out, err

    def kill(self) -> None:
        """Ends the stream; the runtime kills the process when its stream is cancelled."""
        self._call.cancel()

    terminate = kill


async def _none():
    return None


# ---- images -----------------------------------------------------------------------------------

class RemoteImageStore:
    """ImageStore's interface (what the kubelet uses: get, list, pull, remove) over ImageService."""

    def __init__(self, endpoint: str):
        self._ch = _Channels(endpoint)
        self.endpoint = endpoint

    @property
    def _stub(self) -> pb_grpc.ImageServiceStub:
        return pb_grpc.ImageServiceStub(self._ch.aio())

    def _sync_stub(self) -> pb_grpc.ImageServiceStub:
        return pb_grpc.ImageServiceStub(self._ch.sync())

    async def close(self) -> None:
        await self._ch.close()

    def get(self, ref: str) -> ImageInfo | None:
        """Synchronous, as ImageStore's: a blocking ImageStatus call on the local socket."""
        try:
            resp = self._sync_stub().ImageStatus(pb.ImageRequest(ref=ref), timeout=SYNC_TIMEOUT)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return image_from_pb(resp.image) if resp.HasField("image") else None

    async def status(self, ref: str) -> ImageInfo | None:
        """get() without blocking the caller's event loop: what the kubelet uses."""
        resp = await _call(self._stub.ImageStatus(pb.ImageRequest(ref=ref)))
        return image_from_pb(resp.image) if resp.HasField("image") else None

    def list(self) -> list[ImageInfo]:
        try:
            resp = self._sync_stub().ListImages(pb.ListImagesRequest(), timeout=SYNC_TIMEOUT)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [image_from_pb(m) for m in resp.images]

    async def pull(self, ref: str, *, insecure_registries: Iterable[str] = (), progress=None) -> ImageInfo:
        """progress is accepted for ImageStore's signature; the daemon does not stream it."""
        req = pb.PullImageRequest(ref=ref, insecure_registries=list(insecure_registries))
        return image_from_pb(await _call(self._stub.PullImage(req)))

    async def remove(self, ref: str) -> list[ImageInfo]:
        resp = await _call(self._stub.RemoveImage(pb.ImageRequest(ref=ref)))
        return [image_from_pb(m) for m in resp.images]
