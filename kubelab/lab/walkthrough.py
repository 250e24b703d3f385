"""The seed lecture's walkthrough on a running lab: what `make lab` shows after `kubelab lab up`.

Where it sits: a user at the host's shell, nothing more. It runs the `kubelab` CLI the way the
lecture runs kubectl, and prints each command before its output:

    kubelab get nodes
    kubelab get pods -n kube-system          # the control plane as pods, the overlay agents
    kubelab create ns dev
    kubelab run web -n dev --image=busybox   # busybox httpd on a worker
    kubelab apply -f -                       # a client pod pinned to another node
    kubelab get pods -n dev -o wide
    kubelab exec client -n dev -- wget ...   # pod to pod by pod IP, across nodes
    kubelab logs web -n dev                  # httpd saw the client's own pod IP: no NAT

It leaves everything up and ends with how to go on and how to take the lab down.
`python -m kubelab.lab.walkthrough [--config FILE]` (default: the CLI's ~/.kubelab/config).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

NS = "dev"
PORT = 8080
WEB_SCRIPT = (f"mkdir -p /www; echo hello from $(hostname) > /www/index.html; "
              f"exec httpd -f -vv -p {PORT} -h /www")
RUNNING_TIMEOUT = 120.0


class WalkthroughError(Exception):
    pass


class Shell:
    def __init__(self, config: str | None):
        script = Path(sys.executable).parent / "kubelab"
        self.kubelab = [str(script)] if script.exists() else [sys.executable, "-m", "kubelab.cli.main"]
        self.config = ["--config", config] if config else []

    def run(self, *args: str, stdin: str | None = None, show: bool = True, check: bool = True) -> str:
        if show:
            print(f"\n$ kubelab {' '.join(shlex.quote(a) for a in args)}" + (" <<EOF" if stdin else ""), flush=True)
            if stdin:
                print(stdin.rstrip() + "\nEOF", flush=True)
        p = subprocess.run([*self.kubelab, *args, *self.config], input=stdin, capture_output=True, text=True,
                           check=False)
        if show:
            sys.stdout.write(p.stdout + p.stderr)
            sys.stdout.flush()
        if check and p.returncode != 0:
            raise WalkthroughError(f"kubelab {' '.join(args)} failed (exit {p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args, "-o", "json", show=False))

    def wait_running(self, pod: str) -> dict:
        print(f"# waiting for pod {pod} to be Running", flush=True)
        deadline = time.monotonic() + RUNNING_TIMEOUT
        while True:
            p = self.json("get", "pod", pod, "-n", NS)
            if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP"):
                return p
            if time.monotonic() > deadline:
                raise WalkthroughError(f"pod {pod} not Running after {RUNNING_TIMEOUT:.0f}s: {p.get('status')}")
            time.sleep(0.5)


def client_manifest(node: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {NS}
spec:
  nodeName: {node}
  containers:
  - name: client
    image: busybox
    command: [sleep, "100000"]
"""


def walkthrough(sh: Shell) -> None:
    sh.run("get", "nodes", "-o", "wide")
    sh.run("get", "pods", "-n", "kube-system", "-o", "wide")
    existing = {n.strip().removeprefix("namespace/") for n in sh.run("get", "ns", "-o", "name", show=False).split()}
    if NS in existing:
        print(f"\n# namespace {NS} exists already (an earlier walkthrough): its pods are replaced")
        sh.run("delete", "pods", "--all", "-n", NS, "--now", show=False)
    else:
        sh.run("create", "ns", NS)
    sh.run("run", "web", "-n", NS, "--image=busybox", f"--port={PORT}", "--command", "--", "sh", "-c", WEB_SCRIPT)
    web = sh.wait_running("web")
    nodes = sh.json("get", "nodes")["items"]
    workers = [n["metadata"]["name"] for n in nodes
               if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})]
    web_node = web["spec"]["nodeName"]
    other = next((w for w in workers if w != web_node), None) or next(
        n["metadata"]["name"] for n in nodes if n["metadata"]["name"] != web_node)
    print(f"\n# web runs on {web_node}; a client pod goes to {other}")
    sh.run("apply", "-f", "-", stdin=client_manifest(other))
    client = sh.wait_running("client")
    sh.run("get", "pods", "-n", NS, "-o", "wide")
    web_ip, client_ip = web["status"]["podIP"], client["status"]["podIP"]
    print(f"\n# from the client pod on {other} ({client_ip}) to the web pod on {web_node} by its pod IP")
    # no -T: Debian's busybox-static builds wget without it (and crashes on the flag)
    out = sh.run("exec", "client", "-n", NS, "--", "wget", "-qO-", f"http://{web_ip}:{PORT}/")
    if "hello from" not in out:
        raise WalkthroughError(f"the client could not reach http://{web_ip}:{PORT}/: {out}")
    deadline = time.monotonic() + 10  # the log line goes through the runtime's log file: a moment
    while client_ip not in sh.run("logs", "web", "-n", NS, show=False) and time.monotonic() < deadline:
        time.sleep(0.2)
    logs = sh.run("logs", "web", "-n", NS)
    if client_ip not in logs:
        raise WalkthroughError(f"httpd's log does not name the client's pod IP {client_ip} as the source "
                               "(NAT between the nodes?)")
    print(f"# httpd saw the client's own pod IP {client_ip}: pod to pod without NAT, across nodes")
    master = next((n["metadata"]["name"] for n in nodes if n["metadata"]["name"] not in workers), "MASTER")
    print(f"""
The lab stays up. Go on with:
  kubelab get pods -A -o wide
  kubelab lab shell {master}             # a shell inside the master VM
  kubelab lab partition {web_node}       # cut a node off; kubelab get nodes -w shows it NotReady
  kubelab lab heal {web_node}
  kubelab lab status
Take it down with: kubelab lab down  (it leaves nothing behind)""")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kubelab.lab.walkthrough", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="client config (default: the CLI's own)")
    args = ap.parse_args(argv)
    try:
        walkthrough(Shell(args.config))
    except WalkthroughError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
