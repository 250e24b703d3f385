"""The API server process (`kubelab apiserver`): etcd client, one watch cache and one store
per kind, the generic API service, grpc health and reflection, served with mutual TLS only
(token and anonymous callers present the well-known anonymous certificate; see auth.py).

It also owns housekeeping that Kubernetes' API server and kubeadm own: creating the four
default namespaces and publishing kube-public/cluster-info (CA + address, for discovery by
joining nodes) on start, compacting etcd's history every few minutes, and the `kubernetes`
Service in `default` with its Endpoints and EndpointSlice (Kubernetes' lease endpoint
reconciler: every API server keeps /registry/masterleases/<its address> alive on an etcd lease,
and the endpoints list the live ones, so a stopped server drops out within the lease's TTL).
Services get their ClusterIPs and NodePorts from the Store's allocator (allocator.py).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubelab.api import kinds
from kubelab.api.v1 import api_pb2, objects_pb2 as v1
from kubelab.client.config import server_credentials, server_options
from kubelab.errors import AlreadyExists
from kubelab.etcd.client import EtcdClient

from .allocator import DEFAULT_NODE_PORTS, DEFAULT_SERVICE_CIDR, Allocator, IPRange, PortRange
from .proxy import KubeletProxy
from .registry import PROTECTED_NAMESPACES
from .service import SERVICE, ApiService, generic_handler
from .store import LIST_PAGE_BYTES, Store
from .watchcache import WatchCache

log = logging.getLogger("apiserver")


@dataclass
class Options:
    etcd_servers: str
    listen: str = "127.0.0.1:6443"
    # the HTTP face (rest/): "" = the --listen host and port+1 (port 0 when --listen's is 0)
    http_listen: str = ""
    pki_dir: Path | None = None  # ca.crt, apiserver.crt, apiserver.key; None: plaintext (unit tests only)
    cache_capacity: int = 10000
    bookmark_interval: float = 30.0
    compaction_interval: float = 300.0
    default_toleration_seconds: int = 300  # added to pods for the not-ready/unreachable taints
    list_page_bytes: int = LIST_PAGE_BYTES  # bytes of objects in one List response, at most
    advertise_address: str = ""  # the IP nodes reach this server at (cluster-info, endpoints); "": listen's
    service_cluster_ip_range: str = DEFAULT_SERVICE_CIDR
    service_node_port_range: str = DEFAULT_NODE_PORTS
    endpoint_reconcile_interval: float = 10.0  # the masterlease's TTL is 1.5 times this
    # etcd over TLS (https:// servers): etcd's CA, and the API server's client certificate at etcd
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""


class APIServer:
    def __init__(self, opts: Options):
        self.opts = opts
        self.etcd = EtcdClient(opts.etcd_servers, ca=opts.etcd_cafile or None, cert=opts.etcd_certfile or None,
                               key=opts.etcd_keyfile or None)
        self.caches: dict[str, WatchCache] = {}
        self.stores: dict[str, Store] = {}
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.http = None
        self.http_port = 0
        self._tasks: list[asyncio.Task] = []
        self.ips = IPRange(opts.service_cluster_ip_range)  # ValueError names the flag
        self.node_ports = PortRange(opts.service_node_port_range)
        self._master_lease = 0

    async def start(self) -> None:
        from .registry import STRATEGIES
        STRATEGIES["pods"].toleration_seconds = self.opts.default_toleration_seconds
        for kind in kinds.KINDS:
            if not kind.stored:
                continue
            cache = WatchCache(kind, self.etcd, f"/registry/{kind.resource}/",
                               capacity=self.opts.cache_capacity,
                               bookmark_interval=self.opts.bookmark_interval)
            self.caches[kind.resource] = cache
        page = self.opts.list_page_bytes
        ns_store = Store(kinds.BY_RESOURCE["namespaces"], self.etcd, self.caches["namespaces"],
                         list_page_bytes=page)
        for kind in kinds.KINDS:
            if kind.stored:
                self.stores[kind.resource] = (ns_store if kind.resource == "namespaces" else
                                              Store(kind, self.etcd, self.caches[kind.resource], ns_store,
                                                    list_page_bytes=page))
        self.stores["services"].allocator = Allocator(self.etcd, self.ips, self.node_ports)
        await self._wait_for_etcd()
        await asyncio.gather(*(c.start() for c in self.caches.values()))
        await self._default_namespaces()

        self.server = grpc.aio.server(options=server_options())
        self.proxy = KubeletProxy(self.stores, self.opts.pki_dir)
        ca_pem = (Path(self.opts.pki_dir) / "ca.crt").read_bytes() if self.opts.pki_dir is not None else None
        self.svc = ApiService(self.stores, self.proxy, ca_pem=ca_pem)
        self.server.add_generic_rpc_handlers((generic_handler(self.svc),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        if self.opts.pki_dir is not None:
            d = Path(self.opts.pki_dir)
            # the chain carries the CA after the serving certificate: a joining node reads it
            # from the handshake and checks it against its --discovery-token-ca-cert-hash
            chain = (d / "apiserver.crt").read_bytes().rstrip() + b"\n" + ca_pem
            creds = server_credentials(ca_pem, chain, (d / "apiserver.key").read_bytes())
            self.port = self.server.add_secure_port(self.opts.listen, creds)
        else:
            self.port = self.server.add_insecure_port(self.opts.listen)
        if not self.port:
            raise RuntimeError(f"cannot listen on {self.opts.listen}")
        await self.server.start()
        await self._start_http()
        if ca_pem is not None:
            await self._publish_cluster_info(ca_pem)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self._compactor(), name="compactor"))
        try:
            await self._reconcile_master_endpoints()
        except Exception as e:  # noqa: BLE001 - the loop below tries again
            log.warning("the kubernetes service's endpoints: %s", e)
        self._tasks.append(asyncio.create_task(self._endpoint_reconciler(), name="endpoint-reconciler"))
        log.info("serving on %s (port %d), HTTP on port %d", self.opts.listen, self.port, self.http_port)

    def http_address(self) -> tuple[str, int]:
        """Where the HTTP face listens: --http-listen, else --listen's host and port + 1."""
        if self.opts.http_listen:
            host, _, port = self.opts.http_listen.rpartition(":")
            return host.strip("[]"), int(port)
        host, _, port = self.opts.listen.rpartition(":")
        return host.strip("[]"), (int(port) + 1 if int(port) else 0)

    async def _start_http(self) -> None:
        from .rest.app import HTTPServer, RestAPI
        self.http = HTTPServer(RestAPI(self.svc), self.opts.pki_dir)
        host, port = self.http_address()
        try:
            try:
                self.http_port = await self.http.start(host, port)
            except RuntimeError:
                if self.opts.http_listen:
                    raise  # asked for: its failure is the answer
                # the derived default (--listen's port + 1) is taken: any port, said in the log
                log.warning("HTTP API: port %d is in use, listening on a free port instead", port)
                self.http_port = await self.http.start(host, 0)
        except BaseException:
            await self.server.stop(0)
            raise

    async def _wait_for_etcd(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            try:
                await self.etcd.status()
                return
            except Exception as e:  # noqa: BLE001
                if loop.time() > end:
                    raise RuntimeError(f"etcd at {self.opts.etcd_servers} did not answer: {e}") from None
                log.info("waiting for etcd at %s", self.opts.etcd_servers)
                await asyncio.sleep(0.5)

    async def _default_namespaces(self) -> None:
        for name in PROTECTED_NAMESPACES:
            ns = v1.Namespace()
            ns.metadata.name = name
            try:
                await self.stores["namespaces"].create("", ns)
            except AlreadyExists:
                pass

    def advertise_host(self, *, resolve: bool = False) -> str:
        """--advertise-address, else the --listen host; a wildcard is not an address a node can
        dial, so then the host's name (resolved to its address for the endpoints)."""
        if self.opts.advertise_address:
            return self.opts.advertise_address
        host = self.opts.listen.rpartition(":")[0].strip("[]")
        import socket
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        if resolve:
            from .validation import is_ip
            if not is_ip(host):
                host = socket.gethostbyname(host)  # endpoints hold addresses, not names
        return host

    async def _publish_cluster_info(self, ca_pem: bytes) -> None:
        """kube-public/cluster-info, readable without credentials: what `join` discovers."""
        from kubelab.bootstrap.discovery import cluster_info_configmap
        server = f"{self.advertise_host()}:{self.port}"
        cm = cluster_info_configmap(ca_pem, server, f"{self.advertise_host()}:{self.http_port}")
        store = self.stores["configmaps"]
        try:
            await store.create("kube-public", cm)
        except AlreadyExists:
            old = v1.ConfigMap.FromString(await store.get("kube-public", cm.metadata.name))
            if old.data != cm.data:
                old.data.clear()
                old.data.update(cm.data)
                await store.update("kube-public", old)

    async def _compactor(self) -> None:
        """Compact etcd to the revision seen one interval ago, as the Kubernetes API server does."""
        last = 0
        while True:
            await asyncio.sleep(self.opts.compaction_interval)
            try:
                _, rev = await self.etcd.get(b"compact_rev_key")
                if last:
                    await self.etcd.compact(last)
                    log.info("compacted etcd to revision %d", last)
                last = rev
            except Exception as e:  # noqa: BLE001 - compaction is best effort
                log.warning("compaction failed: %s", e)

    # -- the kubernetes Service and its endpoints (Kubernetes' lease endpoint reconciler) --
    async def _endpoint_reconciler(self) -> None:
        while True:
            await asyncio.sleep(self.opts.endpoint_reconcile_interval)
            try:
                await self._reconcile_master_endpoints()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - tried again next interval
                log.warning("the kubernetes service's endpoints: %s", e)

    async def _reconcile_master_endpoints(self) -> None:
        ttl = max(int(self.opts.endpoint_reconcile_interval * 1.5), 5)
        if not self._master_lease or not await self.etcd.lease_keepalive_once(self._master_lease):
            self._master_lease = await self.etcd.lease_grant(ttl)
            await self.etcd.put(MASTER_LEASES + self.advertise_host(resolve=True).encode(),
                                str(self.port).encode(), lease=self._master_lease)
        await reconcile_master_endpoints(self.stores, self.etcd, self.ips.address(1), self.port)

    async def _leave_master_endpoints(self) -> None:
        """A stopping server takes itself out of the endpoints at once, as Kubernetes' does."""
        if self._master_lease:
            await self.etcd.lease_revoke(self._master_lease)
            self._master_lease = 0
            await reconcile_master_endpoints(self.stores, self.etcd, self.ips.address(1), self.port)

    async def stop(self, grace: float = 2.0) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._leave_master_endpoints(), 2.0)
        except Exception as e:  # noqa: BLE001 - best effort: the lease expires anyway
            log.info("leaving the kubernetes service's endpoints: %s", e)
        if self.http is not None:
            await self.http.stop()
        for c in self.caches.values():
            await c.stop()
        if self.server is not None:
            await self.server.stop(grace)
            await self.proxy.close()
        await self.etcd.close()


MASTER_LEASES = b"/registry/masterleases/"
KUBERNETES = "kubernetes"


async def reconcile_master_endpoints(stores: dict[str, Store], etcd: EtcdClient, cluster_ip: str,
                                     port: int) -> None:
    """default/kubernetes: the Service (ClusterIP = the range's first address, 443 -> the API
    servers' port), and its Endpoints and EndpointSlice listing every API server with a live
    masterlease. Writes only what differs, so an idle cluster sees no events from it."""
    from kubelab.etcd.txn import prefix_end
    r = await etcd.range(MASTER_LEASES, range_end=prefix_end(MASTER_LEASES))
    ips = sorted(kv.key[len(MASTER_LEASES):].decode() for kv in r.kvs)
    port = int(r.kvs[0].value) if r.kvs and r.kvs[0].value.isdigit() else port

    svc = v1.Service()
    svc.metadata.name, svc.metadata.namespace = KUBERNETES, "default"
    svc.metadata.labels.update({"component": "apiserver", "provider": "kubernetes"})
    svc.spec.type, svc.spec.clusterIP = "ClusterIP", cluster_ip
    p = svc.spec.ports.add(name="https", protocol="TCP", port=443)
    p.targetPort.number_value = port

    def fix_service(old: v1.Service) -> bool:
        if [(q.name, q.port, q.targetPort) for q in old.spec.ports] == [(p.name, p.port, p.targetPort)]:
            return False
        del old.spec.ports[:]
        old.spec.ports.add().CopyFrom(p)
        return True
    await _ensure(stores["services"], svc, fix_service)

    ep = v1.Endpoints()
    ep.metadata.name, ep.metadata.namespace = KUBERNETES, "default"
    ep.metadata.labels["endpointslice.kubernetes.io/skip-mirror"] = "true"
    if ips:
        sub = ep.subsets.add()
        for ip in ips:
            sub.addresses.add(ip=ip)
        sub.ports.add(name="https", port=port, protocol="TCP")

    def fix_endpoints(old: v1.Endpoints) -> bool:
        if list(old.subsets) == list(ep.subsets):
            return False
        del old.subsets[:]
        old.subsets.extend(ep.subsets)
        return True
    await _ensure(stores["endpoints"], ep, fix_endpoints)

    es = v1.EndpointSlice(addressType="IPv4")
    es.metadata.name, es.metadata.namespace = KUBERNETES, "default"
    es.metadata.labels["kubernetes.io/service-name"] = KUBERNETES
    for ip in ips:
        e = es.endpoints.add(addresses=[ip])
        e.conditions.ready = True
    es.ports.add(name="https", port=port, protocol="TCP")

    def fix_slice(old: v1.EndpointSlice) -> bool:
        if list(old.endpoints) == list(es.endpoints) and list(old.ports) == list(es.ports):
            return False
        del old.endpoints[:]
        old.endpoints.extend(es.endpoints)
        del old.ports[:]
        old.ports.extend(es.ports)
        return True
    await _ensure(stores["endpointslices"], es, fix_slice)


async def _ensure(store: Store, obj, fix) -> None:
    """Create obj, or bring the stored one in line through fix(stored) -> changed."""
    from kubelab.errors import Conflict
    try:
        await store.create("default", obj)
        return
    except AlreadyExists:
        pass
    for _ in range(5):
        raw = await store.get("default", obj.metadata.name)
        old = type(obj).FromString(raw)
        if not fix(old):
            return
        try:
            await store.update("default", old)
            return
        except Conflict:
            continue


async def serve(opts: Options) -> None:
    srv = APIServer(opts)
    await srv.start()
    try:
        await srv.server.wait_for_termination()
    finally:
        await srv.stop()


__all__ = ["APIServer", "Options", "serve", "api_pb2"]
