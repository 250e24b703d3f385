"""The node daemons as host services: the container runtime (`kubelab runtime`) and the kubelet
(`kubelab kubelet`) run on every node init or join makes, never as pods (the kubelet is what
runs pods). This module is the one place that knows how they are kept running.

Each service has a flags file VAR_DIR/<service>.env holding one line
`KUBELAB_ARGS=--flag=value --flag2=value2`, exactly what systemd's EnvironmentFile= reads, so
one file serves both ways of running it:

- under systemd, the units in deploy/systemd read it (ExecStart=... kubelet $KUBELAB_ARGS);
  init and join `systemctl daemon-reload` and `enable` + `restart` them;
- without systemd (a lab VM, a bare container host), the Runner below plays systemd's part:
  it runs every service whose flags file exists, restarts one that dies (with backoff) or
  whose flags change, and stops one (SIGTERM, SIGKILL after 10 s) whose flags file goes. In a
  lab VM the VM's supervisor runs it; elsewhere `kubelab node-services` does, started detached
  by init/join. Either way its pid is in RUN_DIR/node-services.pid and each running service's
  pid in RUN_DIR/<service>.pid, which is how init, join and reset tell what runs.
Logs go to VAR_DIR/log/<service>.log (systemd's journal on a systemd host).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RUNTIME, KUBELET = "kubelab-runtime", "kubelab-kubelet"
SERVICES = {RUNTIME: "runtime", KUBELET: "kubelet"}  # service -> the kubelab command it runs
VAR_DIR = Path("/var/lib/kubelab")
RUN_DIR = Path("/run/kubelab")
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
STOP_TIMEOUT = 10.0
POLL = 0.5
_FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*(=[^\s\"'\\]*)?$")


class ServiceError(Exception):
    pass


# ---- flags files

def flags_path(var_dir: Path, service: str) -> Path:
    return Path(var_dir) / f"{service}.env"


def format_flags(flags: dict[str, str]) -> str:
    """{"node-name": "w1"} -> 'KUBELAB_ARGS=--node-name=w1\\n'. systemd splits $KUBELAB_ARGS on
    white space and would keep quotes, so a value may hold neither."""
    words = []
    for name, value in flags.items():
        word = f"--{name}={value}"
        if not _FLAG.match(word):
            raise ServiceError(f"flag --{name}: value {value!r} may not hold spaces, quotes or "
                               "backslashes (the flags file is read by systemd's EnvironmentFile=)")
        words.append(word)
    return "KUBELAB_ARGS=" + " ".join(words) + "\n"


def parse_flags(text: str) -> list[str]:
    """The argv words of a flags file (the last KUBELAB_ARGS= line wins, as in systemd)."""
    args: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("KUBELAB_ARGS="):
            args = line[len("KUBELAB_ARGS="):].split()
    return args


def write_flags(var_dir: Path, service: str, flags: dict[str, str]) -> Path:
    path = flags_path(var_dir, service)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(format_flags(flags))
    os.replace(tmp, path)  # the Runner never reads half a file
    return path


def service_argv(service: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "kubelab.cli.main", SERVICES[service], *args]


# ---- pid files

def read_pid(path: Path) -> int:
    """The pid in a pid file if that process lives (a zombie does not count), else 0."""
    try:
        pid = int(path.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return 0
    return 0 if state in ("Z", "X") else pid


def runner_pid(run_dir: Path = RUN_DIR) -> int:
    return read_pid(Path(run_dir) / "node-services.pid")


# ---- the Runner

@dataclass
class _Proc:
    service: str
    args: list[str] = field(default_factory=list)
    popen: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = 1.0
    not_before: float = 0.0          # no restart before this (monotonic)
    term_sent: float = 0.0           # when SIGTERM went out, 0 if not stopping


class Runner:
    """systemd's part for the node daemons where there is no systemd; call step() every POLL
    seconds (run() does), stop_all() on the way out."""

    def __init__(self, var_dir: Path = VAR_DIR, run_dir: Path = RUN_DIR, *, log=print,
                 stop_timeout: float = STOP_TIMEOUT, env: dict[str, str] | None = None, argv=None):
        self.argv = argv or service_argv  # (service, args) -> the command line; tests hand in their own
        self.var_dir, self.run_dir, self.log, self.stop_timeout = Path(var_dir), Path(run_dir), log, stop_timeout
        self.env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        self.procs = {s: _Proc(s) for s in SERVICES}

    def claim(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        other = runner_pid(self.run_dir)
        if other and other != os.getpid():
            raise ServiceError(f"the node services already run under pid {other} ({self.run_dir}/node-services.pid)")
        (self.run_dir / "node-services.pid").write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        pidfile = self.run_dir / "node-services.pid"
        if read_pid(pidfile) in (0, os.getpid()):
            pidfile.unlink(missing_ok=True)

    def idle(self) -> bool:
        """No flags file and nothing running."""
        return all(p.popen is None and not flags_path(self.var_dir, s).exists() for s, p in self.procs.items())

    def step(self) -> None:
        now = time.monotonic()
        for s, p in self.procs.items():
            try:
                wanted = parse_flags(flags_path(self.var_dir, s).read_text())
                exists = True
            except FileNotFoundError:
                wanted, exists = [], False
            if p.popen is not None and p.popen.poll() is not None:
                self._exited(p, now)
            if p.popen is not None:
                if not exists or wanted != p.args:
                    self._stop_step(p, now, "its flags file is gone" if not exists else "its flags changed")
                continue
            if exists and now >= p.not_before:
                self._start(p, wanted, now)

    def _start(self, p: _Proc, args: list[str], now: float) -> None:
        log_dir = self.var_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{p.service}.log", "ab") as out:
            p.popen = subprocess.Popen(self.argv(p.service, args), stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, env=self.env, cwd="/", start_new_session=True,
                                       preexec_fn=_unblock_signals)
        p.args, p.started, p.term_sent = args, now, 0.0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / f"{p.service}.pid").write_text(f"{p.popen.pid}\n")
        self.log(f"started {p.service} (pid {p.popen.pid}): {SERVICES[p.service]} {' '.join(args)}")

    def _exited(self, p: _Proc, now: float) -> None:
        code = p.popen.returncode
        (self.run_dir / f"{p.service}.pid").unlink(missing_ok=True)
        p.popen = None
        if p.term_sent:
            self.log(f"stopped {p.service} (exit {code})")
            p.not_before, p.backoff = 0.0, 1.0
            return
        # a daemon that ran for a minute was healthy: its next failure starts the backoff over
        if now - p.started > 60:
            p.backoff = 1.0
        p.not_before = now + p.backoff
        self.log(f"{p.service} exited with code {code}; restarting in {p.backoff:.0f}s "
                 f"(see {self.var_dir}/log/{p.service}.log)")
        p.backoff = min(p.backoff * 2, 30.0)

    def _stop_step(self, p: _Proc, now: float, why: str) -> None:
        if not p.term_sent:
            self.log(f"stopping {p.service}: {why}")
            p.popen.send_signal(signal.SIGTERM)
            p.term_sent = now
        elif now - p.term_sent > self.stop_timeout:
            self.log(f"{p.service} did not stop {self.stop_timeout:.0f}s after SIGTERM: SIGKILL")
            p.popen.kill()

    def stop_all(self) -> None:
        """SIGTERM every running service, SIGKILL what is left after the stop timeout."""
        running = [p for p in self.procs.values() if p.popen is not None and p.popen.poll() is None]
        for p in running:
            p.popen.send_signal(signal.SIGTERM)
            p.term_sent = time.monotonic()
        deadline = time.monotonic() + self.stop_timeout
        for p in running:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{p.service} did not stop {self.stop_timeout:.0f}s after SIGTERM: SIGKILL")
                p.popen.kill()
                p.popen.wait()
        for p in self.procs.values():
            if p.popen is not None:
                self._exited(p, time.monotonic())

    def run(self, *, exit_when_idle: bool = False) -> int:
        """Until SIGTERM/SIGINT/SIGHUP (or, with exit_when_idle, until no service is wanted)."""
        sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        self.claim()
        try:
            while True:
                self.step()
                if exit_when_idle and self.idle():
                    self.log("no node service is wanted any more: exiting")
                    return 0
                info = signal.sigtimedwait(sigs, POLL)
                if info is not None:
                    self.log(f"stopping the node services on {signal.Signals(info.si_signo).name}")
                    return 0
        finally:
            self.stop_all()
            self.release()
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _unblock_signals() -> None:
    # the Runner waits for its signals blocked (sigtimedwait); a child inherits the mask, and a
    # daemon with SIGTERM blocked could never be stopped
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


# ---- what init, join and reset call

def has_systemd() -> bool:
    """sd_booted(): systemd is the init system of this machine."""
    return Path("/run/systemd/system").is_dir()


def unit_installed(service: str) -> bool:
    return any((d / f"{service}.service").exists() for d in UNIT_DIRS)


def _systemctl(*args: str) -> None:
    p = subprocess.run(["systemctl", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise ServiceError(f"systemctl {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")


def uses_systemd() -> bool:
    return has_systemd() and all(unit_installed(s) for s in SERVICES)


def start_services(var_dir: Path = VAR_DIR, run_dir: Path = RUN_DIR, *, say=print) -> str:
    """Start (or restart) the services whose flags files are written; returns how they run."""
    if uses_systemd():
        _systemctl("daemon-reload")
        for s in SERVICES:
            _systemctl("enable", f"{s}.service")
            _systemctl("restart", f"{s}.service")
            say(f"[kubelet-start] systemd: {s}.service enabled and (re)started")
        return "systemd"
    if has_systemd():
        say("[kubelet-start] WARNING: systemd runs this machine but the kubelab units are not installed "
            "(deploy/install.sh installs them); using kubelab's own node service runner")
    pid = runner_pid(run_dir)
    if pid:
        say(f"[kubelet-start] the node service runner (pid {pid}) starts the services from their flags files")
        return "runner"
    log_dir = Path(var_dir) / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "node-services.log", "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "kubelab.cli.main", "node-services", "--var-dir", str(var_dir),
                              "--run-dir", str(run_dir), "--exit-when-idle"],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                             start_new_session=True)  # detached: it outlives init, as a daemon
    deadline = time.monotonic() + 10
    while runner_pid(run_dir) != p.pid:
        if p.poll() is not None or time.monotonic() > deadline:
            raise ServiceError(f"kubelab node-services did not start; see {log_dir}/node-services.log")
        time.sleep(0.05)
    say(f"[kubelet-start] started kubelab's node service runner (pid {p.pid}, log {log_dir}/node-services.log)")
    return "runner"


def running(run_dir: Path = RUN_DIR) -> dict[str, int]:
    """service -> pid, for the services the Runner has running."""
    return {s: pid for s in SERVICES if (pid := read_pid(Path(run_dir) / f"{s}.pid"))}


def stop_services(var_dir: Path = VAR_DIR, run_dir: Path = RUN_DIR, *, say=print,
                  timeout: float = STOP_TIMEOUT + 5) -> None:
    """Remove the flags files and wait until the services are gone. Safe when nothing runs."""
    if uses_systemd():
        for s in reversed(list(SERVICES)):
            subprocess.run(["systemctl", "disable", "--now", f"{s}.service"], capture_output=True)
    for s in reversed(list(SERVICES)):  # the kubelet first: it is the runtime's client
        flags_path(var_dir, s).unlink(missing_ok=True)
    if not runner_pid(run_dir):
        _kill_orphans(run_dir, say)
        return
    deadline = time.monotonic() + timeout
    # until the runner has seen them exit (it removes their pid files once reaped), so that
    # nothing of them is left when this returns; a runner that dies meanwhile leaves orphans
    while any((Path(run_dir) / f"{s}.pid").exists() for s in SERVICES):
        if not runner_pid(run_dir):
            _kill_orphans(run_dir, say)
            break
        if time.monotonic() > deadline:
            left = ", ".join(s for s in SERVICES if (Path(run_dir) / f"{s}.pid").exists())
            raise ServiceError(f"{left} still running {timeout:.0f}s after their flags files were removed")
        time.sleep(0.1)
    say("[reset] stopped the kubelet and the container runtime")


def _kill_orphans(run_dir: Path, say) -> None:
    # a runner that died (SIGKILL) leaves its services running with their pid files
    for s, pid in running(run_dir).items():
        try:
            os.kill(pid, signal.SIGKILL)
            say(f"[reset] killed {s} (pid {pid}), left without its runner")
        except ProcessLookupError:
            pass
    for s in SERVICES:
        (Path(run_dir) / f"{s}.pid").unlink(missing_ok=True)


# ---- `kubelab node-services`

def register(sub, parents) -> None:
    import argparse
    p = sub.add_parser("node-services", parents=parents,
                       help="Run the node daemons from their flags files, where there is no systemd")
    p.add_argument("--var-dir", default=str(VAR_DIR), help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=str(RUN_DIR), help=argparse.SUPPRESS)
    p.add_argument("--exit-when-idle", action="store_true", help="exit once no flags file is left")
    p.set_defaults(func=_run_cmd, daemon=True)


def _run_cmd(args) -> int:
    def log(msg: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} node-services: {msg}", flush=True)
    try:
        return Runner(Path(args.var_dir), Path(args.run_dir), log=log).run(exit_when_idle=args.exit_when_idle)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
