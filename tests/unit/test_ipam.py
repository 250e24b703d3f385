"""Host-local style IPAM (worker/network/ipam.py): files only, no kernel."""
from __future__ import annotations

import ipaddress
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.network.errors import AddressExhausted, NetworkError
from worker.network.ipam import IPAM


def test_range_of_a_slash_24(tmp_path):
    ipam = IPAM(tmp_path, "10.244.1.0/24")
    assert str(ipam.gateway) == "10.244.1.1"
    assert (str(ipam.first), str(ipam.last), ipam.size) == ("10.244.1.2", "10.244.1.254", 253)
    assert ipam.allocate("sb-a") == "10.244.1.2"
    assert ipam.allocate("sb-b") == "10.244.1.3"


def test_allocate_is_idempotent_per_owner_and_survives_a_new_object(tmp_path):
    ipam = IPAM(tmp_path, "10.244.1.0/24")
    ip = ipam.allocate("sb-a")
    assert ipam.allocate("sb-a") == ip
    restarted = IPAM(tmp_path, "10.244.1.0/24")
    assert restarted.allocate("sb-a") == ip
    assert restarted.allocations() == {ip: "sb-a"}
    assert (tmp_path / ip).read_text().strip() == "sb-a"  # readable with cat


def test_release_frees_and_is_idempotent(tmp_path):
    ipam = IPAM(tmp_path, "10.244.1.0/24")
    ip = ipam.allocate("sb-a")
    assert ipam.release("sb-a") == [ip]
    assert ipam.release("sb-a") == []
    assert ipam.allocations() == {}
    assert ipam.lookup("sb-a") is None


def test_a_freed_address_is_not_reused_at_once(tmp_path):
    ipam = IPAM(tmp_path, "10.244.1.0/24")
    a = ipam.allocate("sb-a")
    ipam.release("sb-a")
    assert ipam.allocate("sb-b") != a  # round robin after the last reserved, as host-local


def test_wraps_around_and_fills_every_address_then_fails_clearly(tmp_path):
    ipam = IPAM(tmp_path, "10.244.1.0/29")  # .1 gateway, .2-.6 pods, .7 broadcast
    got = [ipam.allocate(f"sb-{i}") for i in range(5)]
    assert got == [f"10.244.1.{i}" for i in range(2, 7)]
    with pytest.raises(AddressExhausted) as err:
        ipam.allocate("sb-late")
    assert isinstance(err.value, NetworkError)
    assert "10.244.1.0/29" in str(err.value) and "all 5 addresses" in str(err.value)
    ipam.release("sb-0")
    assert ipam.allocate("sb-late") == "10.244.1.2"


def test_gc_frees_dead_owners(tmp_path):
    ipam = IPAM(tmp_path, "10.244.1.0/24")
    a, b, c = (ipam.allocate(o) for o in ("sb-a", "sb-b", "sb-c"))
    assert ipam.gc({"sb-b", "sb-unknown"}) == sorted([a, c], key=ipaddress.IPv4Address)
    assert ipam.allocations() == {b: "sb-b"}


def test_gc_sweeps_claims_left_by_a_dead_allocator(tmp_path):
    ipam = IPAM(tmp_path, "10.244.1.0/24")
    old = tmp_path / ".claim-10.244.1.9-dead"
    old.write_text("sb-x\n")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".claim-10.244.1.10-busy"
    fresh.write_text("sb-y\n")
    ipam.gc([])
    assert not old.exists() and fresh.exists()


def test_a_new_pod_cidr_ignores_and_cleans_the_old_one(tmp_path):
    old = IPAM(tmp_path, "10.244.1.0/24")
    old_a = old.allocate("sb-a")
    old.allocate("sb-b")
    new = IPAM(tmp_path, "10.244.7.0/24")
    assert new.allocations() == {}
    assert new.lookup("sb-a") is None
    a = new.allocate("sb-a")
    assert ipaddress.IPv4Address(a) in new.subnet
    assert not (tmp_path / old_a).exists()  # the owner's old address is gone with it
    new.gc({"sb-a", "sb-b"})  # sb-b is alive but its address is of the old subnet
    assert sorted(os.listdir(tmp_path)) == sorted([a, "last_reserved"])


def test_release_without_knowing_the_subnet(tmp_path):
    IPAM(tmp_path, "10.244.1.0/24").allocate("sb-a")
    assert IPAM.release_in(tmp_path, "sb-a") == ["10.244.1.2"]
    assert IPAM.release_in(tmp_path / "never-made", "sb-a") == []


@pytest.mark.parametrize("subnet", ["10.244.1.1/24", "fd00::/64", "10.244.1.0/31"])
def test_bad_subnets(tmp_path, subnet):
    with pytest.raises(ValueError):
        IPAM(tmp_path, subnet)


@pytest.mark.parametrize("owner", ["", " sb", "a\nb"])
def test_bad_owners(tmp_path, owner):
    with pytest.raises(ValueError):
        IPAM(tmp_path, "10.244.1.0/24").allocate(owner)


def test_two_allocators_on_one_dir_never_collide(tmp_path):
    """Two IPAM objects (two kubelets by mistake, or a kubelet and its restarted self) in
    threads, racing over a /27: every address goes to exactly one owner."""
    ipams = [IPAM(tmp_path, "10.244.1.0/27"), IPAM(tmp_path, "10.244.1.0/27")]
    start = threading.Barrier(2)
    got: dict[str, str] = {}
    errors: list[Exception] = []

    def worker(n: int) -> None:
        start.wait()
        for i in range(20):
            try:
                got[f"sb-{n}-{i}"] = ipams[n].allocate(f"sb-{n}-{i}")
            except AddressExhausted:
                pass
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 29  # a /27 holds .2-.30
    assert len(set(got.values())) == len(got)
    assert ipams[0].allocations() == {ip: owner for owner, ip in got.items()}


def test_racing_for_the_same_owner_settles_on_one_address(tmp_path):
    ipams = [IPAM(tmp_path, "10.244.1.0/24") for _ in range(4)]
    start = threading.Barrier(4)
    got: list[str] = []

    def worker(ipam: IPAM) -> None:
        start.wait()
        got.append(ipam.allocate("sb-same"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in ipams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1
    assert ipams[0].allocations() == {got[0]: "sb-same"}


ops = st.lists(st.tuples(st.sampled_from(["allocate", "release", "gc"]),
                         st.integers(0, 1),      # which of two IPAM objects
                         st.integers(0, 11)),    # which owner
               max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_random_sequences_never_share_an_address_nor_leave_the_range(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("ipam")
    ipams = [IPAM(d, "10.244.3.0/28"), IPAM(d, "10.244.3.0/28")]  # 13 pod addresses, 12 owners
    first, last = ipaddress.IPv4Address("10.244.3.2"), ipaddress.IPv4Address("10.244.3.14")
    model: dict[str, str] = {}  # owner -> address, as the callers were told
    for op, which, n in ops:
        owner, ipam = f"sb-{n}", ipams[which]
        if op == "allocate":
            ip = ipam.allocate(owner)  # 12 owners never exhaust 13 addresses
            assert model.setdefault(owner, ip) == ip, "an owner got a second address"
            assert first <= ipaddress.IPv4Address(ip) <= last
        elif op == "release":
            ipam.release(owner)
            model.pop(owner, None)
        else:
            live = {o for o in model if int(o.split("-")[1]) % 2 == 0}
            ipam.gc(live)
            model = {o: ip for o, ip in model.items() if o in live}
        assert len(set(model.values())) == len(model), "one address handed to two owners"
        assert ipams[1 - which].allocations() == {ip: o for o, ip in model.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(owners=st.lists(st.integers(0, 40), max_size=60))
def test_exhaustion_only_when_every_address_is_taken(tmp_path_factory, owners):
    d = tmp_path_factory.mktemp("ipam")
    ipam = IPAM(d, "10.244.3.0/28")
    held: dict[str, str] = {}
    for n in owners:
        owner = f"sb-{n}"
        try:
            held[owner] = ipam.allocate(owner)
        except AddressExhausted:
            assert owner not in held and len(held) == ipam.size
    assert len(set(held.values())) == len(held) <= ipam.size
