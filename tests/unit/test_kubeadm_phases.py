"""kubeadm/phases.py and init's flag checks: phases run in order, a failure is reported in
kubeadm's words and rolls back exactly what this run created; preflight's report."""
from __future__ import annotations

import asyncio

import pytest

from kubeadm import init, phases, preflight
from kubeadm.phases import Context, Phase, PhaseError


def run(ps, ctx, rolled):
    async def rollback(c):
        rolled.append(True)
        phases.remove_created(c)
    asyncio.run(phases.run_phases(ps, ctx, rollback=rollback))


def test_failure_names_the_phase_and_takes_back_only_what_this_run_made(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "keep.conf").write_text("mine")  # there before the run: never removed
    order = []

    def certs(ctx):
        order.append("certs")
        ctx.mkdir(etc / "pki" / "etcd")
        ctx.track(etc / "admin.conf").write_text("x")
        ctx.track(etc / "keep.conf")

    async def wait(ctx):
        order.append("wait")
        raise TimeoutError("the API server did not answer")

    def never(ctx):
        order.append("never")

    ctx = Context(etc_dir=etc, var_dir=tmp_path / "var", say=lambda m: None)
    rolled: list = []
    with pytest.raises(PhaseError) as e:
        run([Phase("certs", certs), Phase("wait-control-plane", wait), Phase("later", never)], ctx, rolled)
    assert str(e.value) == "error execution phase wait-control-plane: the API server did not answer"
    assert order == ["certs", "wait"] and rolled == [True]
    assert sorted(p.name for p in etc.iterdir()) == ["keep.conf"]


def test_phase_error_keeps_its_own_phase_and_success_rolls_nothing_back(tmp_path):
    ctx = Context(etc_dir=tmp_path, var_dir=tmp_path, say=lambda m: None)
    rolled: list = []
    run([Phase("a", lambda c: None)], ctx, rolled)
    assert rolled == []

    def bad(c):
        raise PhaseError("preflight", "[preflight] Some fatal errors occurred")
    with pytest.raises(PhaseError, match="^error execution phase preflight: "):
        run([Phase("other-name", bad)], ctx, rolled)


def test_track_records_missing_parents_once(tmp_path):
    ctx = Context(etc_dir=tmp_path, var_dir=tmp_path)
    ctx.track(tmp_path / "a" / "b" / "c.conf")
    ctx.track(tmp_path / "a" / "b" / "d.conf")
    assert ctx.created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c.conf",
                           tmp_path / "a" / "b" / "d.conf"]


@pytest.mark.parametrize("kw,message", [
    ({"pod_network_cidr": "10.244.0.0/33"}, 'invalid --pod-network-cidr "10.244.0.0/33"'),
    ({"service_cidr": "10.96.0.1/12"}, 'invalid --service-cidr "10.96.0.1/12"'),
    ({"service_cidr": "10.244.0.0/20"}, "--pod-network-cidr 10.244.0.0/16 overlaps --service-cidr"),
    ({"pod_network_cidr": "10.244.0.0/25"}, 'invalid --pod-network-cidr "10.244.0.0/25": each node gets a /24'),
    ({"advertise_address": "nope"}, 'invalid --apiserver-advertise-address "nope"'),
    ({"node_name": "Bad_Name"}, 'invalid --node-name "Bad_Name"'),
])
def test_init_flags_are_checked_naming_the_flag(kw, message):
    with pytest.raises(PhaseError) as e:
        init.validate(init.InitOptions(**kw))
    assert str(e.value).startswith("error execution phase preflight: " + message)


def test_apiserver_sans_hold_advertise_name_and_first_service_ip():
    o = init.InitOptions(node_name="m", service_cidr="10.96.0.0/12")
    sans = init.apiserver_sans(o, "192.168.56.10")
    assert {"192.168.56.10", "m", "10.96.0.1", "kubernetes.default.svc"} <= set(sans)


def test_preflight_reports_every_error_and_the_reset_hint(tmp_path):
    (tmp_path / "admin.conf").write_text("x")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "etcd.yaml").write_text("x")
    errs = preflight.check_not_initialized(tmp_path)
    assert len(errs) == 2 and "admin.conf already exists" in errs[0] and "is not empty" in errs[1]
    text = preflight.report(errs, reset_hint=True)
    assert text.startswith("[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable")
    assert text.endswith('run "kubelab reset" first')


def test_port_in_use_is_found():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert preflight.check_port(port) == f"[ERROR Port-{port}]: Port {port} is in use"
    assert preflight.check_port(port) is None
