"""Server-side dry run (dryRun=All) and DeleteOptions.propagationPolicy through the gRPC face,
against a real etcd and an in-process API server (one of each for the module): a dry-run
create, update, status update and delete of pods, services and namespaces answers the object
as it would be, runs defaulting, validation, allocation and preconditions (their errors still
come back), and leaves etcd as it was: no object, no ClusterIP or NodePort key held."""
from __future__ import annotations

import pytest
import pytest_asyncio

from kubelab import meta
from kubelab.api.v1 import api_pb2
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import AlreadyExists, Conflict, Invalid, NotFound
from kubelab.etcd.client import EtcdClient
from kubelab.etcd.server import EtcdServer
from kubelab.etcd.txn import prefix_end
from master.apiserver.allocator import IP_PREFIX, PORT_PREFIX

from .conftest import start_apiserver

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("dryrun")
    etcd = EtcdServer(d / "etcd", unsafe_no_fsync=True, log_path=d / "etcd.log")
    await etcd.start()
    h = ec = None
    try:
        h = await start_apiserver(etcd, d)
        ec = EtcdClient(etcd.endpoint)
        yield h.client, ec
    finally:
        if ec is not None:
            await ec.close()
        if h is not None:
            await h.client.close()
            await h.server.stop(0)
        await etcd.stop()


async def keys(ec: EtcdClient, prefix: bytes) -> list[bytes]:
    r = await ec.range(prefix, range_end=prefix_end(prefix), keys_only=True)
    return [kv.key for kv in r.kvs]


async def create(client, obj, *, dry_run: bool, ns: str = "default"):
    resource = {v1.Pod: "pods", v1.Service: "services", v1.Namespace: "namespaces",
                v1.ConfigMap: "configmaps"}[type(obj)]
    r = await client.call("Create", api_pb2.CreateRequest(resource=resource, namespace=ns,
                                                          object=meta.pack(obj), dryRun=dry_run))
    return meta.unpack(r.object)


async def update(client, resource: str, obj, *, status: bool = False, ns: str = "default"):
    r = await client.call("UpdateStatus" if status else "Update", api_pb2.UpdateRequest(
        resource=resource, namespace=ns, object=meta.pack(obj), dryRun=True))
    return meta.unpack(r.object)


async def delete(client, resource: str, name: str, *, dry_run: bool = True, ns: str = "default",
                 uid: str = "", policy: str = ""):
    r = await client.call("Delete", api_pb2.DeleteRequest(resource=resource, namespace=ns, name=name,
                                                          preconditionUid=uid, dryRun=dry_run,
                                                          propagationPolicy=policy))
    return meta.unpack(r.object)


def pod(name: str) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name = name
    p.spec.containers.add(name="c", image="busybox")
    return p


def service(name: str, *, type: str = "", cluster_ip: str = "", node_port: int = 0) -> v1.Service:
    s = v1.Service()
    s.metadata.name = name
    s.spec.type, s.spec.clusterIP = type, cluster_ip
    s.spec.selector["app"] = name
    p = s.spec.ports.add(port=80, nodePort=node_port)
    p.targetPort.number_value = 8080
    return s


async def test_a_dry_run_pod_create_is_answered_defaulted_and_not_stored(env):
    client, ec = env
    got = await create(client, pod("dry"), dry_run=True)
    assert got.metadata.name == "dry" and got.metadata.namespace == "default"
    assert got.metadata.uid and got.metadata.creationTimestamp
    assert got.metadata.resourceVersion == ""  # nothing was written: no version to name
    assert got.spec.dnsPolicy == "ClusterFirst"  # defaulting ran
    assert await keys(ec, b"/registry/pods/") == []
    with pytest.raises(NotFound):
        await client.resource("pods", "default").get("dry")


async def test_a_dry_run_create_still_answers_validation_and_conflicts(env):
    client, _ = env
    bad = pod("Bad_Name")
    with pytest.raises(Invalid, match="metadata.name"):
        await create(client, bad, dry_run=True)
    empty = pod("empty")
    del empty.spec.containers[:]
    with pytest.raises(Invalid, match="spec.containers"):
        await create(client, empty, dry_run=True)
    with pytest.raises(NotFound, match='namespaces "nowhere" not found'):
        await create(client, pod("lost"), dry_run=True, ns="nowhere")
    real = await create(client, pod("taken"), dry_run=False)
    try:
        with pytest.raises(AlreadyExists, match='pods "taken" already exists'):
            await create(client, pod("taken"), dry_run=True)
    finally:
        await delete(client, "pods", real.metadata.name, dry_run=False)


async def test_a_dry_run_service_create_picks_an_ip_and_port_but_holds_neither(env):
    client, ec = env
    ips, ports = await keys(ec, IP_PREFIX), await keys(ec, PORT_PREFIX)
    got = await create(client, service("np", type="NodePort"), dry_run=True)
    assert got.spec.clusterIP and list(got.spec.clusterIPs) == [got.spec.clusterIP]
    assert 30000 <= got.spec.ports[0].nodePort <= 32767
    assert await keys(ec, IP_PREFIX) == ips and await keys(ec, PORT_PREFIX) == ports
    assert await keys(ec, b"/registry/services/default/np") == []
    # the same name really created afterwards is free to take anything: nothing was held
    real = await create(client, service("np", type="NodePort", cluster_ip=got.spec.clusterIP,
                                        node_port=got.spec.ports[0].nodePort), dry_run=False)
    try:
        assert real.spec.clusterIP == got.spec.clusterIP
        # and now a dry run asking for what it holds is refused as a real create would be
        with pytest.raises(Invalid, match=r'spec.clusterIPs: Invalid value: "[0-9.]+": provided IP is '
                                          r'already allocated'):
            await create(client, service("other", cluster_ip=real.spec.clusterIP), dry_run=True)
        with pytest.raises(Invalid, match=r"spec.ports\[0\].nodePort: Invalid value: \d+: provided port "
                                          r"is already allocated"):
            await create(client, service("other", type="NodePort", node_port=real.spec.ports[0].nodePort),
                         dry_run=True)
        with pytest.raises(Invalid, match="provided port is not in the valid range"):
            await create(client, service("other", type="NodePort", node_port=80), dry_run=True)
    finally:
        await delete(client, "services", "np", dry_run=False)
    assert await keys(ec, IP_PREFIX) == ips and await keys(ec, PORT_PREFIX) == ports


async def test_a_dry_run_update_answers_the_change_and_keeps_the_stored_object(env):
    client, _ = env
    pods = client.resource("pods", "default")
    real = await create(client, pod("upd"), dry_run=False)
    bump = v1.ConfigMap()
    bump.metadata.name = "bump"
    await create(client, bump, dry_run=False)  # etcd's revision moves past the pod's
    try:
        changed = v1.Pod()
        changed.CopyFrom(real)
        changed.metadata.labels["tier"] = "web"
        got = await update(client, "pods", changed)
        assert got.metadata.labels["tier"] == "web"
        assert got.metadata.resourceVersion == real.metadata.resourceVersion
        now = await pods.get("upd")
        assert "tier" not in now.metadata.labels
        assert now.metadata.resourceVersion == real.metadata.resourceVersion
        # validation and the resourceVersion precondition still apply
        immutable = v1.Pod()
        immutable.CopyFrom(real)
        immutable.spec.containers[0].image = ""
        with pytest.raises(Invalid, match=r"spec.containers\[0\].image"):
            await update(client, "pods", immutable)
        stale = v1.Pod()
        stale.CopyFrom(changed)
        stale.metadata.resourceVersion = str(int(real.metadata.resourceVersion) - 1)
        with pytest.raises(Conflict):
            await update(client, "pods", stale)
        # the status subresource too
        st = v1.Pod()
        st.CopyFrom(real)
        st.status.phase = "Running"
        got = await update(client, "pods", st, status=True)
        assert got.status.phase == "Running"
        assert (await pods.get("upd")).status.phase != "Running"
    finally:
        await delete(client, "pods", "upd", dry_run=False)
        await delete(client, "configmaps", "bump", dry_run=False)


async def test_a_dry_run_service_update_to_nodeport_holds_no_port(env):
    client, ec = env
    real = await create(client, service("up"), dry_run=False)
    try:
        ports = await keys(ec, PORT_PREFIX)
        to_np = v1.Service()
        to_np.CopyFrom(real)
        to_np.spec.type = "NodePort"
        got = await update(client, "services", to_np)
        assert 30000 <= got.spec.ports[0].nodePort <= 32767
        assert await keys(ec, PORT_PREFIX) == ports
        assert (await client.resource("services", "default").get("up")).spec.type == "ClusterIP"
    finally:
        await delete(client, "services", "up", dry_run=False)


async def test_a_dry_run_delete_answers_and_leaves_everything(env):
    client, ec = env
    svc = await create(client, service("keep"), dry_run=False)
    p = await create(client, pod("keep"), dry_run=False)
    try:
        ips = await keys(ec, IP_PREFIX)
        gone = await delete(client, "services", "keep")
        assert gone.metadata.name == "keep"
        assert await keys(ec, IP_PREFIX) == ips  # the ClusterIP is still held
        got = await client.resource("services", "default").get("keep")
        assert got.metadata.resourceVersion == svc.metadata.resourceVersion
        await delete(client, "pods", "keep")
        assert (await client.resource("pods", "default").get("keep")).metadata.resourceVersion == \
            p.metadata.resourceVersion
        with pytest.raises(Conflict, match="Precondition failed: UID in precondition: nope"):
            await delete(client, "pods", "keep", uid="nope")
        with pytest.raises(NotFound):
            await delete(client, "pods", "never")
    finally:
        await delete(client, "services", "keep", dry_run=False)
        await delete(client, "pods", "keep", dry_run=False)
    assert await keys(ec, b"/registry/pods/default/keep") == []


async def test_a_dry_run_namespace_delete_answers_terminating_and_keeps_it_active(env):
    client, _ = env
    ns = v1.Namespace()
    ns.metadata.name = "dryns"
    await create(client, ns, dry_run=False, ns="")
    try:
        got = await delete(client, "namespaces", "dryns", ns="")
        assert got.status.phase == "Terminating" and got.metadata.deletionTimestamp
        now = await client.resource("namespaces").get("dryns")
        assert now.status.phase == "Active" and not now.metadata.deletionTimestamp
    finally:
        await delete(client, "namespaces", "dryns", dry_run=False, ns="")


async def test_propagation_policy_is_validated_and_the_three_accepted(env):
    client, ec = env
    for policy in ("Orphan", "Background", "Foreground"):
        cm = v1.ConfigMap()
        cm.metadata.name = f"cm-{policy.lower()}"
        await create(client, cm, dry_run=False)
        await delete(client, "configmaps", cm.metadata.name, dry_run=False, policy=policy)
        assert await keys(ec, f"/registry/configmaps/default/{cm.metadata.name}".encode()) == []
    cm = v1.ConfigMap()
    cm.metadata.name = "cm-bad"
    await create(client, cm, dry_run=False)
    try:
        with pytest.raises(Invalid) as e:
            await delete(client, "configmaps", "cm-bad", dry_run=False, policy="Sideways")
        assert e.value.message == ('DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported '
                                   'value: "Sideways": supported values: "Foreground", "Background", '
                                   '"Orphan", "nil"')
        assert await keys(ec, b"/registry/configmaps/default/cm-bad") != []
    finally:
        await delete(client, "configmaps", "cm-bad", dry_run=False)


async def test_a_dry_run_binding_answers_the_bound_pod_and_binds_nothing(env):
    client, _ = env
    real = await create(client, pod("tobind"), dry_run=False)
    bump = v1.ConfigMap()
    bump.metadata.name = "bump-bind"
    await create(client, bump, dry_run=False)  # etcd's revision moves past the pod's
    try:
        b = v1.Binding()
        b.metadata.name, b.metadata.namespace = "tobind", "default"
        b.target.kind, b.target.name = "Node", "n1"
        r = await client.call("Create", api_pb2.CreateRequest(resource="bindings", namespace="default",
                                                              object=meta.pack(b), dryRun=True))
        got = meta.unpack(r.object)
        assert got.spec.nodeName == "n1"
        assert got.metadata.resourceVersion == real.metadata.resourceVersion
        now = await client.resource("pods", "default").get("tobind")
        assert now.spec.nodeName == "" and now.metadata.resourceVersion == real.metadata.resourceVersion
        b.metadata.name = "nobody"
        with pytest.raises(NotFound):
            await client.call("Create", api_pb2.CreateRequest(resource="bindings", namespace="default",
                                                              object=meta.pack(b), dryRun=True))
    finally:
        await delete(client, "pods", "tobind", dry_run=False)
        await delete(client, "configmaps", "bump-bind", dry_run=False)
