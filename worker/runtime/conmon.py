"""conmon, the per-container monitor CRI-O and Podman use (containerd calls its equivalent
the shim), as the runtime drives it.

runc keeps no exit code: a detached container's init is orphaned when `runc create` returns.
So each container gets one conmon (Debian package `conmon`, about 1 MB of private memory
where a Python monitor took 7 MB). conmon daemonizes (own session, reparented away from the
caller, so it outlives kubelet and runtime restarts), becomes a child subreaper, runs
`runc create` with the container's stdout/stderr on pipes it owns, reports the init pid (or
runc's error) on the sync pipe, writes those pipes into the CRI-format log file, and when init
exits writes its exit code (128+signal for a signal) to `<exit dir>/<id>`, then exits.

What conmon does not do and the runtime does (runtime.py): read the memory cgroup's OOM kill
count when it first sees the exit file (the cgroup lives until `runc delete`), and rotate the
log (conmon 2.1's own --log-size-max truncates the file instead of keeping rotated ones, and
does not reset its byte count when asked to reopen; see logs.py).

Files conmon keeps in the container's directory (its OCI bundle): init.pid (runc's pid
file), conmon.pid, exits/<id>, ctl (a FIFO: "2 0 0" asks conmon to reopen the log file), and
attach (the attach socket, see Paths.attach) and the attach socket's directory.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import re
import select
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .proc import tool_message

REOPEN_LOGS = b"2 0 0\n"  # conmon's ctl message type 2: reopen the log files
BUNDLE = re.compile(rb"/containers/([0-9a-f]{64})$")  # runtime.py's layout: <root>/containers/<id>


class ConmonError(Exception):
    pass


@dataclass(frozen=True)
class Paths:
    """Where conmon keeps what the runtime reads, for the container in bundle `cdir`."""
    cdir: Path
    cid: str

    @property
    def init_pid(self) -> Path:
        return self.cdir / "init.pid"

    @property
    def conmon_pid(self) -> Path:
        return self.cdir / "conmon.pid"

    @property
    def exit_dir(self) -> Path:
        return self.cdir / "exits"

    @property
    def exit_file(self) -> Path:
        return self.exit_dir / self.cid

    @property
    def ctl(self) -> Path:
        return self.cdir / "ctl"

    @property
    def socket_dir(self) -> Path:
        return self.cdir / "sockets"

    @property
    def attach(self) -> Path:
        """conmon's attach socket (SOCK_SEQPACKET): what a client sends is the container's
        stdin, what it receives is output with a one-byte pipe prefix (2 stdout, 3 stderr);
        shutdown(SHUT_WR) closes stdin. conmon puts it in the bundle (its --socket-dir-path
        holds a symlink to the bundle, to keep the path short)."""
        return self.cdir / "attach"


def argv(binary: str, p: Paths, *, runc: str, runc_root: Path, log_path: Path, name: str,
         stdin: bool = False, stdin_once: bool = False, tty: bool = False) -> list[str]:
    # -i keeps a pipe to the container's stdin that the attach socket writes to; conmon closes
    # it when an attached client half-closes, unless --leave-stdin-open (stdin without stdinOnce)
    io = (["-i"] + ([] if stdin_once else ["--leave-stdin-open"]) if stdin else []) + (["-t"] if tty else [])
    return [binary, *io, "--api-version", "1", "-c", p.cid, "-u", p.cid, "-n", name, "-r", runc, "-b", str(p.cdir),
            "-p", str(p.init_pid), "-P", str(p.conmon_pid), "--exit-dir", str(p.exit_dir),
            "-l", f"k8s-file:{log_path}", "--socket-dir-path", str(p.socket_dir),
            "--runtime-arg", f"--root={runc_root}",
            "--runtime-arg", f"--log={p.cdir / 'runc.log'}", "--runtime-arg", "--log-format=json"]


def resolve(binary: str) -> str:
    """conmon execs the runtime without a PATH search: it needs a path."""
    found = shutil.which(binary)
    if found is None:
        raise ConmonError(f"{binary} not found (apt-get install -y {os.path.basename(binary)})")
    return os.path.abspath(found)


async def spawn(binary: str, p: Paths, *, runc: str, runc_root: Path, log_path: Path, name: str,
                timeout: float = 60.0, stdin: bool = False, stdin_once: bool = False,
                tty: bool = False) -> tuple[int, int]:
    """Start conmon for the bundle p.cdir (runc create under it); return (init pid, conmon pid).
    Raises ConmonError with runc's message when the container cannot be created."""
    p.exit_dir.mkdir(parents=True, exist_ok=True)
    p.socket_dir.mkdir(parents=True, exist_ok=True)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TZ": "UTC",
               "_OCI_SYNCPIPE": str(w)}
        args = argv(resolve(binary), p, runc=resolve(runc), runc_root=runc_root, log_path=log_path, name=name,
                    stdin=stdin, stdin_once=stdin_once, tty=tty)
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, pass_fds=(w,), env=env, cwd="/")
        os.close(w)
        w = -1
        _, err = await proc.communicate()  # the first process exits at once; the monitor lives on
        if proc.returncode != 0:
            raise ConmonError(f"conmon failed (exit {proc.returncode}): {tool_message(err.decode(errors='replace'))}")
        msg = await asyncio.to_thread(_read_sync, r, timeout)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if msg is None:
        raise ConmonError(f"conmon exited without reporting the container's pid{_runc_log(p)}")
    pid = msg.get("data", -1)
    if not isinstance(pid, int) or pid <= 0:
        raise ConmonError(tool_message(str(msg.get("message", ""))) or f"runc create failed{_runc_log(p)}")
    try:
        monitor = int(p.conmon_pid.read_text().strip())
    except (OSError, ValueError) as e:
        raise ConmonError(f"reading conmon's pid file: {e}") from None
    return pid, monitor


def _read_sync(fd: int, timeout: float) -> dict | None:
    """conmon's first JSON line on the sync pipe ({"data": pid} or {"data": -1, "message": ...});
    None when conmon closed the pipe without one."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConmonError(f"conmon reported nothing in {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0].strip()
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        raise ConmonError(f"conmon sent {line[:200]!r} on the sync pipe") from None


def _runc_log(p: Paths) -> str:
    try:
        msg = tool_message((p.cdir / "runc.log").read_text(errors="replace"))
    except OSError:
        return ""
    return f": {msg}" if msg else ""


def exit_code(p: Paths) -> tuple[int, float] | None:
    """(exit code, when it was written) from conmon's exit file; None while init runs.
    conmon writes the file whole (a temporary file renamed), so it is never half there."""
    try:
        text = p.exit_file.read_text().strip()
        mtime = p.exit_file.stat().st_mtime
    except OSError:
        return None
    try:
        return int(text), mtime
    except ValueError:
        return -1, mtime


def alive(pid: int | None, cid: str) -> bool:
    """Is pid still this container's conmon (not a recycled pid)? A zombie's cmdline is empty."""
    if not pid:
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(args[0]) == b"conmon" and cid.encode() in args


def is_kubelab_conmon(cmdline: bytes) -> bool:
    """Is this /proc/<pid>/cmdline one of kubelab's conmons (for `kubelab reset`, which finds
    them without a root dir)? conmon, with a bundle in kubelab's layout and the same id as -c;
    CRI-O's and Podman's conmons have other bundles (.../userdata)."""
    args = cmdline.rstrip(b"\0").split(b"\0")
    if os.path.basename(args[0]) != b"conmon":
        return False
    opts = dict(itertools.pairwise(args[1:]))  # each word with the one after it: flags and their values
    bundle = opts.get(b"-b") or opts.get(b"--bundle") or b""
    m = BUNDLE.search(bundle.rstrip(b"/"))
    return bool(m) and (opts.get(b"-c") or opts.get(b"--cid")) == m.group(1)


def reopen_log(p: Paths, rotate) -> bool:
    """Call rotate() (which moves the live log file away), then have conmon open a new one.
    False, and rotate() not called, when no conmon listens on the ctl FIFO any more."""
    try:
        fd = os.open(p.ctl, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no reader, conmon is gone
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        rotate()
        os.write(fd, REOPEN_LOGS)
    finally:
        os.close(fd)
    return True
