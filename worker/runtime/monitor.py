"""The per-container monitor (containerd calls its equivalent the shim).

runc keeps no exit code: a detached container's init process is orphaned when `runc create`
returns. So for each container the runtime starts this small process, detached from the
kubelet (own session, double-forked, reparented away from the caller) so that it outlives
kubelet restarts. It

  1. becomes a child subreaper, so the container's init is reparented to it;
  2. runs `runc create` with the container's stdout/stderr on two pipes it owns;
  3. reports the init pid (or runc's error) to the runtime on its stdout, then detaches;
  4. copies the pipes into the container's log file (CRI format, rotated by size: logs.py);
  5. reaps init and writes `exit.json` (exit code, finish time, OOM kills of the container's
     memory cgroup, read before anybody deletes it) next to the bundle, then exits.

Run as `python -m worker.runtime.monitor CONTAINER_DIR`; its settings are CONTAINER_DIR/monitor.json.
"""
from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import sys
import threading
import time
from pathlib import Path

from . import cgroups
from .logs import RotatingLog

PR_SET_CHILD_SUBREAPER = 36


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    except BlockingIOError:
        pass
    os.set_blocking(fd, True)
    return b"".join(chunks)


def _report(result: dict) -> None:
    os.write(1, (json.dumps(result) + "\n").encode())
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # EOF for the runtime waiting on our stdout
    os.close(devnull)


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 255


def run(cdir: Path) -> int:
    cfg = json.loads((cdir / "monitor.json").read_text())
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _report({"error": "prctl(PR_SET_CHILD_SUBREAPER) failed"})
        return 1
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid_file = cdir / "init.pid"
    argv = [cfg["runc"], "--root", cfg["runc_root"], "--log", str(cdir / "runc.log"), "--log-format", "json",
            "create", "--bundle", str(cdir), "--pid-file", str(pid_file), cfg["id"]]
    devnull = os.open(os.devnull, os.O_RDONLY)
    runc_pid = os.fork()
    if runc_pid == 0:
        try:
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, 1024)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    os.close(devnull)
    os.close(out_w)
    os.close(err_w)
    _, status = os.waitpid(runc_pid, 0)
    # nothing of the container has run yet (it waits for `runc start`): what is in the pipes
    # is runc's own output, which belongs in the error message, not in the container's log
    early = (_drain(out_r) + _drain(err_r)).decode(errors="replace")
    if _exit_code(status) != 0 or not pid_file.exists():
        _report({"error": _runc_error(cdir / "runc.log", early)})
        return 1
    pid = int(pid_file.read_text().strip())
    _report({"pid": pid, "monitor": os.getpid()})

    exit_status: dict = {}
    exited = threading.Event()

    def reap() -> None:
        while True:
            try:
                p, st = os.waitpid(-1, 0)
            except ChildProcessError:
                if not exit_status:  # init was not our child after all: poll until it is gone
                    while os.path.exists(f"/proc/{pid}"):
                        time.sleep(0.2)
                    exit_status.update(code=255, lost=True)
                break
            if p == pid:
                exit_status.update(code=_exit_code(st))
                # other orphans may remain for a moment; they die with the pid namespace
                break
        exit_status["finished_ns"] = time.time_ns()
        exited.set()

    threading.Thread(target=reap, daemon=True).start()
    log = RotatingLog(Path(cfg["log_path"]), max_size=cfg["log_max_size"], max_files=cfg["log_max_files"])
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, "stdout")
    sel.register(err_r, selectors.EVENT_READ, "stderr")
    open_streams = 2
    grace_until = None
    while open_streams:
        if exited.is_set() and grace_until is None:
            grace_until = time.monotonic() + 2.0  # writers outside the pid namespace: don't wait forever
        if grace_until is not None and time.monotonic() > grace_until:
            break
        for key, _ in sel.select(timeout=0.5):
            data = os.read(key.fd, 65536)
            if data:
                log.write(key.data, data)
            else:
                log.flush_stream(key.data)
                sel.unregister(key.fd)
                open_streams -= 1
    log.close()
    exited.wait()
    oom = cgroups.oom_kills(cfg["cgroup_path"])
    code = exit_status["code"]
    reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
    _write_json(cdir / "exit.json", {
        "exit_code": code, "finished_at": exit_status["finished_ns"] / 1e9, "oom_kills": oom,
        "reason": reason, "lost": bool(exit_status.get("lost"))})
    return 0


def _runc_error(runc_log: Path, stderr: str) -> str:
    from .proc import tool_message
    msg = ""
    try:
        msg = tool_message(runc_log.read_text())
    except OSError:
        pass
    return msg or tool_message(stderr) or "runc create failed"


def main() -> int:
    cdir = Path(sys.argv[1])
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)
    if os.fork() != 0:
        os._exit(0)  # the caller reaps this one at once; the grandchild belongs to nobody
    try:
        return run(cdir)
    except Exception as e:  # the runtime reads this from our stdout, or from monitor.log
        import traceback
        traceback.print_exc()
        try:
            _report({"error": f"monitor: {e}"})
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
