"""`kubelab runtime`: the node's container runtime as its own daemon, serving a CRI-shaped gRPC
API (kubelab.runtime.v1 RuntimeService and ImageService) on a unix socket; the kubelet is its
client (remote.py) when started with --container-runtime-endpoint.

It wraps one Runtime and one ImageStore, exactly the objects the kubelet otherwise loads in
process. Containers are runc containers whose conmon monitors are their parents, so they outlive this
daemon: a restarted daemon lists the same root directory and finds them again. Errors become
gRPC status codes (NOT_FOUND for unknown containers and images, FAILED_PRECONDITION for create,
start and pull failures with runc's or the registry's message, INVALID_ARGUMENT for bad
references), with the exception's class named in the trailing metadata `kubelab-error`.
The socket is mode 0600 (root's only) and is removed on exit.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc

from kubelab.daemon import run_until_signalled
from kubelab.runtime.v1 import runtime_pb2 as pb
from kubelab.runtime.v1 import runtime_pb2_grpc as pb_grpc

from . import remote
from .execstream import relay
from .images import ImageStore
from .runtime import Runtime

log = logging.getLogger("runtime.server")
DEFAULT_LISTEN = "unix:///run/kubelab/runtime.sock"


def register(sub, parents) -> None:
    p = sub.add_parser("runtime", parents=parents,
                       help="Run the container runtime daemon (CRI-shaped gRPC on a unix socket)")
    add_flags(p)
    p.set_defaults(func=run, daemon=True)


def add_flags(p) -> None:
    p.add_argument("--root-dir", default="/var/lib/kubelab", help="containers live under ROOT_DIR/containers")
    p.add_argument("--image-dir", default="", help="where images live (default ROOT_DIR)")
    p.add_argument("--runc-root", default="", help="runc state dir (default ROOT_DIR/runc)")
    p.add_argument("--cgroup-parent", default="/kubelab")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="unix:///path/to/socket")


async def _guard(ctx, coro):
    """Await coro; turn the runtime's exceptions into a gRPC status."""
    try:
        return await coro
    except Exception as e:  # noqa: BLE001
        code = remote.error_code(e)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("internal error")
        await ctx.abort(code, str(e) or type(e).__name__, trailing_metadata=remote.error_metadata(e))


async def _sync(fn, *args):
    return fn(*args)


class RuntimeServicer(pb_grpc.RuntimeServiceServicer):
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    async def Version(self, req, ctx):
        return pb.VersionResponse(runtime_name="kubelab", runtime_version=await _guard(ctx, self.rt.version()))

    async def CreateContainer(self, req, ctx):
        cid = await _guard(ctx, self.rt.create(remote.spec_from_pb(req.spec)))
        log.info("created container %s (%s)", cid[:12], req.spec.container_name)
        return pb.CreateContainerResponse(id=cid)

    async def StartContainer(self, req, ctx):
        await _guard(ctx, self.rt.start(req.id))
        return pb.Empty()

    async def StopContainer(self, req, ctx):
        await _guard(ctx, self.rt.stop(req.id, req.timeout))
        return pb.Empty()

    async def RemoveContainer(self, req, ctx):
        await _guard(ctx, self.rt.remove(req.id))
        return pb.Empty()

    async def ContainerStatus(self, req, ctx):
        st = await _guard(ctx, self.rt.status(req.id))
        return pb.ContainerStatusResponse(status=remote.status_to_pb(st))

    async def ListContainers(self, req, ctx):
        sts = await _guard(ctx, self.rt.list())
        return pb.ListContainersResponse(containers=[remote.status_to_pb(s) for s in sts])

    async def ExecSync(self, req, ctx):
        timeout = req.timeout if req.HasField("timeout") else None
        rc, out, err = await _guard(ctx, self.rt.exec_sync(req.id, list(req.cmd), timeout=timeout))
        return pb.ExecSyncResponse(exit_code=rc, stdout=out, stderr=err)

    async def Exec(self, requests, ctx):
        s = await _start(requests, ctx, "exec")
        proc = await _guard(ctx, self.rt.exec(s.id, list(s.cmd), tty=s.tty, stdin=s.stdin))
        # leaving early (the client cancels the stream) is how a client kills the process
        async for msg in _session(proc, requests, reap=True):
            yield msg

    async def Attach(self, requests, ctx):
        s = await _start(requests, ctx, "attach")
        proc = await _guard(ctx, self.rt.attach(s.id, stdin=s.stdin))
        # the client leaving (the stream cancelled) detaches; the container runs on
        async for msg in _session(proc, requests, reap=False):
            yield msg

    async def ContainerLogs(self, req, ctx):
        tail = req.tail if req.HasField("tail") else None
        try:
            async for e in self.rt.read_log_entries(req.id, tail=tail, follow=req.follow):
                yield pb.LogLine(line=e.text, time=e.time, stream=e.stream)
        except Exception as e:  # noqa: BLE001
            await ctx.abort(remote.error_code(e), str(e), trailing_metadata=remote.error_metadata(e))

    async def RemovePodSandbox(self, req, ctx):
        await _guard(ctx, self.rt.remove_sandbox(req.pod_uid))
        return pb.Empty()

    async def ListPodSandboxes(self, req, ctx):
        return pb.ListPodSandboxesResponse(pod_uids=await _guard(ctx, _sync(self.rt.sandbox_uids)))


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, images: ImageStore):
        self.images = images

    async def ListImages(self, req, ctx):
        infos = await _guard(ctx, _sync(self.images.list))
        return pb.ListImagesResponse(images=[remote.image_to_pb(i) for i in infos])

    async def ImageStatus(self, req, ctx):
        info = await _guard(ctx, _sync(self.images.get, req.ref))
        return pb.ImageStatusResponse(image=remote.image_to_pb(info)) if info else pb.ImageStatusResponse()

    async def PullImage(self, req, ctx):
        info = await _guard(ctx, self.images.pull(req.ref, insecure_registries=list(req.insecure_registries)))
        log.info("pulled %s (%s)", info.ref, info.digest)
        return remote.image_to_pb(info)

    async def RemoveImage(self, req, ctx):
        infos = await _guard(ctx, self.images.remove(req.ref))
        return pb.RemoveImageResponse(images=[remote.image_to_pb(i) for i in infos])


async def _start(requests, ctx, verb: str):
    """The start message that opens an exec or attach stream."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("msg") != "start":
        await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{verb}: the first message must be start")
    return first.start


async def _session(proc, requests, *, reap: bool):
    """An exec or attach stream: started, the relayed stdio, the exit code; a process still
    running when the stream ends is killed (reap: and waited for; attach's kill only detaches)."""
    try:
        yield pb.ExecResponse(started=True)
        async for msg in relay(proc, requests, message=lambda kind, data: pb.ExecResponse(**{kind: data}),
                               close_field="stdin_close"):
            yield msg
        yield pb.ExecResponse(exit_code=await proc.wait())
    finally:
        if proc.returncode is None:
            proc.kill()
            if reap:
                await proc.wait()


def socket_path(listen: str) -> Path:
    if not listen.startswith("unix:"):
        raise ValueError(f"--listen must be a unix socket (unix:///path), not {listen!r}")
    path = listen.removeprefix("unix:")
    if path.startswith("//"):
        path = path[2:]
    return Path(path)


class RuntimeServer:
    def __init__(self, runtime: Runtime, images: ImageStore, listen: str = DEFAULT_LISTEN):
        self.runtime, self.images, self.listen = runtime, images, listen
        self.path = socket_path(listen)
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket of a previous run
        self.server = grpc.aio.server()
        pb_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(self.runtime), self.server)
        pb_grpc.add_ImageServiceServicer_to_server(ImageServicer(self.images), self.server)
        self.server.add_insecure_port(f"unix://{self.path}")
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            await self.server.start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(2)
            self.server = None
        self.path.unlink(missing_ok=True)


async def run(args) -> int:
    root = Path(args.root_dir)
    images = ImageStore(Path(args.image_dir or root))
    runtime = Runtime(root, runc_root=Path(args.runc_root or root / "runc"), images=images,
                      cgroup_parent=args.cgroup_parent)
    server = RuntimeServer(runtime, images, args.listen)
    version = await runtime.version()
    await server.start()
    print(f"container runtime ({version}) on {args.listen}, root {root}, "
          f"{len(await runtime.list())} containers found", flush=True)

    return await run_until_signalled(asyncio.Event().wait(), cleanup=server.stop)


if __name__ == "__main__":  # `python -m worker.runtime.server --root-dir ... --listen unix:///...`
    import argparse
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="kubelab runtime")
    add_flags(parser)
    sys.exit(asyncio.run(run(parser.parse_args())))
