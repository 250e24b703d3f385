"""pods/log and pods/exec: the API server finds the pod's node and relays the stream to that
node's kubelet (gRPC on the node's InternalIP and kubelet port, mutual TLS: the API server
shows its client certificate, and trusts the kubelet's serving certificate that the kubelet
published on its Node). So `kubelab logs` and `kubelab exec` work from anywhere the API is
reachable, as in Kubernetes.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import grpc

from kubelab.api.v1 import api_pb2
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.config import channel_options
from kubelab.errors import ApiError, BadRequest, ServiceUnavailable, from_rpc_error

log = logging.getLogger("apiserver.proxy")
SERVING_CERT_ANNOTATION = "kubelab.io/kubelet-serving-cert"
KUBELET = "/kubelab.kubelet.v1.Kubelet/"


class KubeletProxy:
    def __init__(self, stores: dict, pki_dir: Path | None):
        self.stores = stores
        self.pki_dir = Path(pki_dir) if pki_dir else None
        self.channels: dict[tuple, grpc.aio.Channel] = {}

    async def _pod_and_node(self, namespace: str, name: str) -> tuple[v1.Pod, v1.Node]:
        pods, nodes = self.stores["pods"], self.stores["nodes"]
        raw = await pods.get(namespace or "default", name)
        pod = v1.Pod.FromString(raw)
        if not pod.spec.nodeName:
            raise BadRequest(f"pod {name} does not have a host assigned")
        node = v1.Node.FromString(await nodes.get("", pod.spec.nodeName))
        return pod, node

    def channel(self, node: v1.Node) -> grpc.aio.Channel:
        if self.pki_dir is None:
            raise ServiceUnavailable("the API server runs without TLS: no client certificate for kubelets")
        ip = next((a.address for a in node.status.addresses if a.type == "InternalIP"), "")
        port = node.status.daemonEndpoints.kubeletEndpoint.Port or 10250
        cert = node.metadata.annotations.get(SERVING_CERT_ANNOTATION, "").encode()
        if not ip or not cert:
            raise ServiceUnavailable(f'node "{node.metadata.name}" has no kubelet endpoint (address or serving '
                                     "certificate missing): is its kubelet running?")
        key = (ip, port, hashlib.sha256(cert).hexdigest())
        ch = self.channels.get(key)
        if ch is None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=cert, private_key=(self.pki_dir / "apiserver.key").read_bytes(),
                certificate_chain=(self.pki_dir / "apiserver.crt").read_bytes())
            opts = channel_options(f"{ip}:{port}") + [("grpc.ssl_target_name_override", node.metadata.name)]
            ch = self.channels[key] = grpc.aio.secure_channel(f"{ip}:{port}", creds, options=opts)
        return ch

    async def logs(self, req: api_pb2.LogsRequest):
        _, node = await self._pod_and_node(req.namespace, req.name)
        call = self.channel(node).unary_stream(
            KUBELET + "ContainerLogs", request_serializer=api_pb2.LogsRequest.SerializeToString,
            response_deserializer=lambda b: b)(req)  # chunks pass through without decoding
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as e:
            raise _kubelet_error(e, node) from None
        finally:
            call.cancel()

    async def exec(self, requests):
        first = await anext(requests, None)
        if first is None or first.WhichOneof("msg") != "start":
            raise BadRequest("exec: the first message must say what to run (start)")
        if not first.start.command:
            raise BadRequest("you must specify at least one command for the container")
        async for resp in self._stream("Exec", first, requests):
            yield resp

    async def attach(self, requests):
        """pods/attach: ExecStart without a command, relayed to the kubelet's Attach."""
        first = await anext(requests, None)
        if first is None or first.WhichOneof("msg") != "start":
            raise BadRequest("attach: the first message must say what to attach to (start)")
        async for resp in self._stream("Attach", first, requests):
            yield resp

    async def _stream(self, method: str, first, requests):
        _, node = await self._pod_and_node(first.start.namespace, first.start.name)

        async def upstream():
            yield first
            async for r in requests:
                yield r
        call = self.channel(node).stream_stream(
            KUBELET + method, request_serializer=api_pb2.ExecRequest.SerializeToString,
            response_deserializer=lambda b: b)(upstream())
        try:
            async for resp in call:
                yield resp
        except grpc.RpcError as e:
            raise _kubelet_error(e, node) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


def _kubelet_error(e: grpc.RpcError, node: v1.Node) -> ApiError:
    err = from_rpc_error(e)
    if isinstance(err, ServiceUnavailable):
        return ServiceUnavailable(f'error dialing the kubelet of node "{node.metadata.name}": {e.details()}')
    return err
