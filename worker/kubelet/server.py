"""The kubelet's own gRPC API on port 10250 (mutual TLS): container logs and exec, which the
API server proxies for `kubelab logs` and `kubelab exec`.

The serving certificate is the kubelet's own: a small CA of the node's, kept under the root
dir, signs it, and the kubelet publishes that CA's certificate on its Node (annotation
kubelab.io/kubelet-serving-cert) for the API server to trust. Clients must show a certificate
of the cluster CA, and only the API server and cluster admins are let in.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc

from kubelab import pki
from kubelab.api.v1 import api_pb2
from kubelab.client.config import server_options
from worker.runtime.execstream import relay
from worker.runtime.runtime import ContainerError


log = logging.getLogger("kubelet.server")
SERVICE = "kubelab.kubelet.v1.Kubelet"
SERVING_CERT_ANNOTATION = "kubelab.io/kubelet-serving-cert"
ALLOWED_USERS = {"kube-apiserver"}
ALLOWED_GROUPS = {"system:masters"}


def serving_cert(root_dir: Path, node_name: str, node_ip: str) -> tuple[bytes, bytes, bytes]:
    """(ca_cert, cert, key) of the kubelet's serving identity, made once and kept."""
    d = Path(root_dir) / "pki"
    d.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key, crt, key = d / "kubelet-ca.crt", d / "kubelet-ca.key", d / "kubelet.crt", d / "kubelet.key"
    if not ca_crt.exists() or not ca_key.exists():
        c, k = pki.create_ca(f"{node_name}-kubelet-ca")
        ca_key.write_bytes(k)
        ca_key.chmod(0o600)
        ca_crt.write_bytes(c)
    wanted = {node_name, node_ip, "localhost", "127.0.0.1"}
    if not crt.exists() or not wanted <= pki.cert_sans(crt.read_bytes()):
        c, k = pki.issue_cert(ca_crt.read_bytes(), ca_key.read_bytes(), f"system:node:{node_name}",
                              sans=sorted(s for s in wanted if s), server=True, client=False)
        key.write_bytes(k)
        key.chmod(0o600)
        crt.write_bytes(c)
    return ca_crt.read_bytes(), crt.read_bytes(), key.read_bytes()


class KubeletServer:
    def __init__(self, kubelet, *, cluster_ca: bytes, listen: str):
        self.kubelet, self.cluster_ca, self.listen = kubelet, cluster_ca, listen
        self.server: grpc.aio.Server | None = None

    async def start(self, cert: bytes, key: bytes) -> int:
        # the API server's channel pings every 30 s (kubelab.client.config): a quiet `logs -f` or
        # attach must not be cut with GOAWAY too_many_pings, so the server allows it
        self.server = grpc.aio.server(options=server_options())
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "ContainerLogs": grpc.unary_stream_rpc_method_handler(
                self.logs, request_deserializer=api_pb2.LogsRequest.FromString,
                response_serializer=api_pb2.LogChunk.SerializeToString),
            "Exec": grpc.stream_stream_rpc_method_handler(
                self.exec, request_deserializer=api_pb2.ExecRequest.FromString,
                response_serializer=api_pb2.ExecResponse.SerializeToString),
            "Attach": grpc.stream_stream_rpc_method_handler(
                self.attach, request_deserializer=api_pb2.ExecRequest.FromString,
                response_serializer=api_pb2.ExecResponse.SerializeToString),
        }),))
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=self.cluster_ca, require_client_auth=True)
        port = self.server.add_secure_port(self.listen, creds)
        await self.server.start()
        return port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(1)

    async def _authorize(self, ctx) -> None:
        certs = ctx.auth_context().get("x509_pem_cert") or [b""]
        try:
            user, groups = pki.cert_identity(certs[0])
        except Exception:  # noqa: BLE001
            user, groups = "", []
        if user not in ALLOWED_USERS and not ALLOWED_GROUPS & set(groups):
            await ctx.abort(grpc.StatusCode.PERMISSION_DENIED, f'user "{user}" may not use the kubelet API',
                            trailing_metadata=(("reason", "Forbidden"),))

    async def _container(self, ctx, namespace: str, name: str, container: str, *, previous: bool = False):
        pod = self.kubelet.find_pod(namespace or "default", name)
        if pod is None:
            await ctx.abort(grpc.StatusCode.NOT_FOUND, f'pods "{name}" not found',
                            trailing_metadata=(("reason", "NotFound"),))
        names = [c.name for c in list(pod.spec.initContainers) + list(pod.spec.containers)]
        if not container:
            if len(pod.spec.containers) != 1 or pod.spec.initContainers:
                await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"a container name must be specified for pod {name}, choose one of: "
                                f"[{' '.join(names)}]", trailing_metadata=(("reason", "BadRequest"),))
            container = pod.spec.containers[0].name
        if container not in names:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"container {container} is not valid for pod {name}",
                            trailing_metadata=(("reason", "BadRequest"),))
        attempts = (await self.kubelet.syncer.containers_of(pod.metadata.uid)).get(container, [])
        idx = 1 if previous else 0
        if len(attempts) <= idx:
            what = "previous terminated container" if previous else "container"
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f'{what} "{container}" in pod "{name}" not found' if previous else
                            f'container "{container}" in pod "{name}" is waiting to start: '
                            f'{self._waiting(pod.metadata.uid, container)}',
                            trailing_metadata=(("reason", "BadRequest"),))
        return pod, container, attempts[idx]

    def _waiting(self, uid: str, container: str) -> str:
        """Why a container has not started, as the kubelet's validateContainerLogStatus says it."""
        reason = getattr(self.kubelet.syncer, "waiting", {}).get((uid, container), ("",))[0]
        return {"ErrImagePull": "image can't be pulled",
                "ImagePullBackOff": "trying and failing to pull image"}.get(reason, reason or "ContainerCreating")

    async def logs(self, req: api_pb2.LogsRequest, ctx):
        await self._authorize(ctx)
        try:
            since = log_since(req)
        except ValueError as e:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e), trailing_metadata=(("reason", "BadRequest"),))
        _, _, c = await self._container(ctx, req.namespace, req.name, req.container, previous=req.previous)
        tail = req.tailLines if req.HasField("tailLines") else None
        left = req.limitBytes if req.HasField("limitBytes") else None
        # an empty chunk first says "found, streaming": the HTTP face sends its 200 on it
        # (kubectl logs -f of a quiet container), errors above come before it as statuses
        yield api_pb2.LogChunk()
        async for e in self.kubelet.runtime.read_log_entries(c.id, tail=tail, follow=req.follow and not req.previous):
            if since is not None and log_time(e.time) < since:
                continue
            data = ((rfc3339nano(e.time) + " " if req.timestamps else "") + e.text + "\n").encode()
            if left is not None:
                data, left = data[:left], left - min(left, len(data))
            yield api_pb2.LogChunk(data=data)
            if left == 0:
                return

    async def exec(self, requests, ctx):
        await self._authorize(ctx)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("msg") != "start":
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "exec: no start message")
        s = first.start
        _, _, c = await self._container(ctx, s.namespace, s.name, s.container)
        if c.state != "running":
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"cannot exec in a stopped container: {s.container or c.labels.get('kubelab.container.name')}",
                            trailing_metadata=(("reason", "BadRequest"),))
        proc = await self.kubelet.runtime.exec(c.id, list(s.command), tty=s.tty, stdin=s.stdin)
        try:
            # an empty stdout message says "started" (as Kubernetes' empty frame on the first
            # output channel): the HTTP face upgrades to WebSocket on it, errors above come first
            yield api_pb2.ExecResponse(stdout=b"")
            async for msg in relay(proc, requests, message=lambda kind, data: api_pb2.ExecResponse(**{kind: data})):
                yield msg
            yield api_pb2.ExecResponse(exitCode=await proc.wait())
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


    async def attach(self, requests, ctx):
        """pods/attach: the container's own stdio (the runtime's Attach); leaving detaches."""
        await self._authorize(ctx)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("msg") != "start":
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "attach: no start message")
        s = first.start
        pod, name, c = await self._container(ctx, s.namespace, s.name, s.container)
        spec = next((x for x in list(pod.spec.initContainers) + list(pod.spec.containers) if x.name == name), None)
        if s.stdin and not (spec is not None and spec.stdin):
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"container {name} in pod {s.name} was not created with stdin (stdin: true in its "
                            "spec): attach without -i, or use exec",
                            trailing_metadata=(("reason", "BadRequest"),))
        if c.state not in ("running", "created"):
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot attach to a stopped container: {name}",
                            trailing_metadata=(("reason", "BadRequest"),))
        try:
            proc = await self.kubelet.runtime.attach(c.id, stdin=s.stdin)
        except ContainerError as e:  # it ended meanwhile, or its monitor is gone
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e), trailing_metadata=(("reason", "BadRequest"),))
        try:
            yield api_pb2.ExecResponse(stdout=b"")  # attached: the HTTP face upgrades on it
            async for msg in relay(proc, requests, message=lambda kind, data: api_pb2.ExecResponse(**{kind: data})):
                yield msg
            yield api_pb2.ExecResponse(exitCode=await proc.wait())
        finally:
            if proc.returncode is None:
                proc.kill()  # detach only: the container runs on


def log_time(t: str) -> datetime:
    """A CRI log line's time (nanoseconds cut to what datetime holds); the epoch when unreadable."""
    try:
        head, _, frac = t.partition(".")
        if frac:
            digits = len(frac) - len(frac.lstrip("0123456789"))
            t = f"{head}.{frac[:min(digits, 6)]}{frac[digits:]}"
        return datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, timezone.utc)


def rfc3339nano(t: str) -> str:
    """The time as Kubernetes prints it (Go's RFC3339Nano: UTC as Z, no trailing zeros)."""
    if t.endswith("+00:00"):
        t = t[:-6] + "Z"
    head, dot, rest = t.partition(".")
    if dot:
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits):]
        digits = digits.rstrip("0")
        t = head + ("." + digits if digits else "") + zone
    return t


def log_since(req: api_pb2.LogsRequest) -> datetime | None:
    """The earliest time to show (sinceSeconds before now, or sinceTime); ValueError if unreadable."""
    if req.HasField("sinceSeconds"):
        return datetime.now(timezone.utc) - timedelta(seconds=req.sinceSeconds)
    if req.sinceTime:
        try:
            t = datetime.fromisoformat(req.sinceTime.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f'sinceTime: invalid value "{req.sinceTime}": an RFC 3339 time was expected') from None
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return None
