"""kubeadm/services.py: the flags file format systemd reads, and the Runner playing systemd's
part with real child processes (a shell loop stands in for the daemons)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kubeadm import services
from kubeadm.services import KUBELET, RUNTIME, Runner, ServiceError


def test_flags_file_is_one_environment_line():
    text = services.format_flags({"node-name": "w1", "root-dir": "/var/lib/kubelab"})
    assert text == "KUBELAB_ARGS=--node-name=w1 --root-dir=/var/lib/kubelab\n"
    assert services.parse_flags(text) == ["--node-name=w1", "--root-dir=/var/lib/kubelab"]


@pytest.mark.parametrize("value", ["a b", 'a"b', "a'b", "a\\b", "a\tb"])
def test_flags_refuse_what_systemd_would_split_or_keep(value):
    with pytest.raises(ServiceError, match="flag --node-labels"):
        services.format_flags({"node-labels": value})


def test_parse_takes_the_last_assignment_and_ignores_comments():
    assert services.parse_flags("# x\nKUBELAB_ARGS=--a=1\nKUBELAB_ARGS=--b=2\n") == ["--b=2"]


def test_write_flags_path(tmp_path):
    p = services.write_flags(tmp_path, KUBELET, {"a": "1"})
    assert p == tmp_path / "kubelab-kubelet.env" and p.read_text() == "KUBELAB_ARGS=--a=1\n"


def _argv(marker: Path):
    # a stand-in daemon: records its args and pid, exits 0 on SIGTERM, or ignores it with --stubborn
    def argv(service, args):
        script = (f'echo "$$ {" ".join(args)}" >> {marker}.{service}; '
                  + ("trap '' TERM; " if "--stubborn=1" in args else "trap 'exit 0' TERM; ")
                  + "while :; do sleep 0.05; done")
        return ["sh", "-c", script]
    return argv


def _until(cond, what, timeout=15.0, runner=None):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if runner is not None:
            runner.step()
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def runner(tmp_path):
    r = Runner(tmp_path / "var", tmp_path / "run", log=lambda m: None, stop_timeout=1.0, argv=_argv(tmp_path / "m"))
    try:
        yield r
    finally:
        r.stop_all()


def test_runner_starts_restarts_and_stops_services_from_flags_files(runner, tmp_path):
    var, run = tmp_path / "var", tmp_path / "run"
    runner.step()
    assert services.running(run) == {}  # no flags file, nothing runs
    services.write_flags(var, RUNTIME, {"root-dir": "/x"})
    runner.step()
    pid = services.running(run)[RUNTIME]
    marker = tmp_path / f"m.{RUNTIME}"
    _until(lambda: marker.exists() and marker.read_text().endswith("\n"), "the service's first line")
    assert marker.read_text().split() == [str(pid), "--root-dir=/x"]
    assert (var / "log" / f"{RUNTIME}.log").exists()
    # it dies: started again (after the first backoff)
    os.kill(pid, signal.SIGKILL)
    _until(lambda: services.running(run).get(RUNTIME, pid) != pid, "the restart", runner=runner)
    # new flags: restarted with them
    services.write_flags(var, RUNTIME, {"root-dir": "/y"})
    _until(lambda: marker.read_text().splitlines()[-1].endswith("--root-dir=/y"),
           "a restart with the new flags", runner=runner)
    pid = services.running(run)[RUNTIME]
    # flags file gone: stopped, not restarted
    services.flags_path(var, RUNTIME).unlink()
    _until(runner.idle, "the stop", runner=runner)
    assert not _alive(pid) and RUNTIME not in services.running(run)


def test_runner_kills_a_service_that_ignores_sigterm(runner, tmp_path):
    var, run = tmp_path / "var", tmp_path / "run"
    services.write_flags(var, KUBELET, {"stubborn": "1"})
    runner.step()
    pid = services.running(run)[KUBELET]
    services.flags_path(var, KUBELET).unlink()
    _until(lambda: KUBELET not in services.running(run), "SIGKILL after the stop timeout", runner=runner)
    assert not _alive(pid)


def test_stop_all_stops_everything(runner, tmp_path):
    var, run = tmp_path / "var", tmp_path / "run"
    services.write_flags(var, KUBELET, {"a": "1"})
    services.write_flags(var, RUNTIME, {"stubborn": "1"})
    runner.step()
    pids = list(services.running(run).values())
    assert len(pids) == 2
    runner.stop_all()
    assert services.running(run) == {} and not any(_alive(p) for p in pids)


def test_a_second_runner_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "node-services.pid").write_text(f"{os.getppid()}\n")  # a live process that is not us
    with pytest.raises(ServiceError, match="already run under pid"):
        Runner(tmp_path / "var", run).claim()


def test_bare_host_runner_runs_the_real_runtime_and_exits_when_idle(tmp_path):
    """Without systemd and without a runner, start_services starts `kubelab node-services`
    detached; it runs the real `kubelab runtime` from its flags file; stop_services removes the
    file, the runtime stops, and the runner, idle, exits by itself."""
    if os.geteuid() != 0 or services.uses_systemd():
        pytest.skip("needs root and no systemd units")
    var, run = tmp_path / "var", tmp_path / "run"
    sock = tmp_path / "runtime.sock"
    services.write_flags(var, RUNTIME, {"root-dir": str(var), "listen": f"unix://{sock}",
                                        "cgroup-parent": "/kubelab/test-kubeadm-services"})
    runner = 0
    try:
        assert services.start_services(var, run, say=lambda m: None) == "runner"
        runner = services.runner_pid(run)
        assert runner and runner != os.getpid()
        _until(lambda: sock.exists(), "the runtime's socket (see var/log/kubelab-runtime.log)", timeout=30)
        rt = services.running(run)[RUNTIME]
        assert b"runtime" in Path(f"/proc/{rt}/cmdline").read_bytes().split(b"\0")
        # a second start finds the runner and starts nothing more
        assert services.start_services(var, run, say=lambda m: None) == "runner"
        assert services.runner_pid(run) == runner
        services.stop_services(var, run, say=lambda m: None)
        assert services.running(run) == {} and not _alive(rt)
        _until(lambda: not _alive(runner), "the idle runner's exit")
        assert not sock.exists()  # the runtime removed its socket on SIGTERM
    finally:
        for f in services.SERVICES:
            services.flags_path(var, f).unlink(missing_ok=True)
        for pid in [runner, *services.running(run).values()]:
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_runner_run_stops_its_services_on_sigterm(tmp_path):
    """run() as the lab VM's supervisor uses it: on SIGTERM every service is stopped first."""
    import subprocess
    import sys
    var, run = tmp_path / "var", tmp_path / "run"
    services.write_flags(var, KUBELET, {"a": "1"})
    code = ("import sys; from pathlib import Path; from kubeadm.services import Runner; "
            "from tests.unit.test_kubeadm_services import _argv; "
            f"r = Runner(Path({str(var)!r}), Path({str(run)!r}), log=print, "
            f"argv=_argv(Path({str(tmp_path / 'm')!r}))); "
            "sys.exit(r.run())")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=str(Path(__file__).resolve().parents[2]))
    try:
        _until(lambda: KUBELET in services.running(run), "the service started by run()")
        svc = services.running(run)[KUBELET]
        assert services.runner_pid(run) == p.pid
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        assert not _alive(svc) and not (run / "node-services.pid").exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid in services.running(run).values():  # a service the runner failed to stop
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
