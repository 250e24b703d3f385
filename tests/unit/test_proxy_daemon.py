"""kubelab/daemon.py's run_agent, the start-up kube-proxy, the overlay agent and cluster DNS share:
a flag error (sync or async check) or a bad --config exits 1 with its line before anything runs;
otherwise the agent runs and its client is closed however it ends. (A real start and SIGTERM:
tests/integration/test_dns.py and test_overlay.py run `kubelab dns` and `kubelab overlay`.)"""
from __future__ import annotations

import argparse
import asyncio

from kubelab.daemon import run_agent


class FakeClient:
    def __init__(self):
        self.closed = False

    async def close(self):
        self.closed = True


def _fake_client(monkeypatch) -> list[FakeClient]:
    """Client.from_config -> a fake that records its close (pure start-up logic, no API)."""
    made: list[FakeClient] = []
    from kubelab.client import client, config
    monkeypatch.setattr(config, "load_default", lambda path: path)
    monkeypatch.setattr(client.Client, "from_config", classmethod(lambda cls, cfg: made.append(FakeClient())
                                                                   or made[-1]))
    return made


def test_check_errors_stop_before_connecting(capsys, tmp_path):
    started = []
    args = argparse.Namespace(config=str(tmp_path / "missing"))
    assert asyncio.run(run_agent(args, started.append, check=lambda a: "error: invalid --x: bad")) == 1

    async def async_check(a):
        return "error: invalid --iface eth9"
    assert asyncio.run(run_agent(args, started.append, check=async_check)) == 1
    assert asyncio.run(run_agent(args, started.append, check=lambda a: None)) == 1  # the config is missing
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["error: invalid --x: bad", "error: invalid --iface eth9"]
    assert out[2].startswith("error: ") and "missing" in out[2]
    assert started == []


def test_runs_the_agent_and_closes_its_client(monkeypatch):
    made = _fake_client(monkeypatch)
    ran = []

    async def agent(client):
        ran.append(client)

    args = argparse.Namespace(config="conf")
    assert asyncio.run(run_agent(args, agent, check=lambda a: None)) == 0
    assert ran == made and made[0].closed
    # start refusing (None) is exit 1, and the client is still closed
    assert asyncio.run(run_agent(args, lambda c: None)) == 1 and made[1].closed

    async def boom(client):
        raise RuntimeError("agent failed")
    try:
        asyncio.run(run_agent(args, boom))
        raise AssertionError("no RuntimeError")
    except RuntimeError as e:
        assert str(e) == "agent failed"
    assert made[2].closed


def test_the_three_agents_exit_1_on_bad_flags_and_config(tmp_path, capsys):
    from kubelab.cli.main import main  # in-process: the real parser, run and run_agent
    for argv, want in ((["proxy", "--config", str(tmp_path / "nope")], "error: config"),
                       (["proxy", "--sync-period", "0"], "error: invalid --sync-period"),
                       (["overlay", "--vni", "0"], "error: invalid --vni"),
                       (["overlay", "--config", str(tmp_path / "nope")], "error: config"),
                       (["dns", "--listen", "bad"], 'error: invalid --listen "bad"'),
                       (["dns", "--config", str(tmp_path / "nope")], "error: config")):
        assert main(argv) == 1, argv
        out = capsys.readouterr().out
        assert want in out, (argv, out)
