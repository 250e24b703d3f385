"""deploy/ and the Vagrantfile, checked where no hypervisor runs: `vagrant validate -p` on the
Vagrantfile (and on broken copies, which must fail); the Vagrantfile loaded by ruby under a
recorder of Vagrant's configuration API (machines, addresses, provisioning order and arguments,
provider sizes from the environment) and its triggers run against a stand-in master; `bash -n`
and shellcheck on every script; deploy/install.sh run twice into a prefix of the test's own; the
systemd units through `systemd-analyze verify` and against the keys kubeadm/services.py relies
on; the Vagrant scripts' choice of the node's address and interface inside a network namespace
made like a Vagrant VM's (the NAT interface, 10.0.2.15, first; the private network second).

The scripts' hand-over (master.sh writes .kubelab/join.sh, worker.sh reads it and adds its own
flags) is checked with a recording stand-in for the CLI (which flags the scripts pass, their
refusals, their idempotence), then for real: master.sh and worker.sh inside a bare lab of this
module's own (`kubelab lab up --bare --workers 1`, prefix klv, bridge klv0, 192.168.67.0/24,
/tmp/lab-v) with a temp dir as the synced folder, until both nodes are Ready.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = {"kubelab-runtime": "runtime", "kubelab-kubelet": "kubelet"}
HASH = "sha256:" + "0123456789abcdef" * 4
TOKEN = "abcdef.0123456789abcdef"



def need_root() -> None:
    """For what install.sh, network namespaces and the lab need; the rest runs as anyone."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kw)


# ---- the Vagrantfile

@pytest.fixture(scope="module")
def vagrant_home(tmp_path_factory) -> Path:
    if not shutil.which("vagrant"):
        pytest.fail("vagrant is not installed: `make install` installs it (Makefile APT_TEST_PACKAGES)")
    return tmp_path_factory.mktemp("vagrant.d")


def vagrant_copy(dst: Path) -> Path:
    """The Vagrantfile and deploy/ in a directory of the test's own: `vagrant validate` writes
    .vagrant/ next to the Vagrantfile, and a broken copy must not touch the checkout."""
    shutil.copy(REPO / "Vagrantfile", dst / "Vagrantfile")
    shutil.copytree(DEPLOY, dst / "deploy")
    return dst


def validate(project: Path, vagrant_home: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAB_")}
    environ.update(VAGRANT_HOME=str(vagrant_home), VAGRANT_CHECKPOINT_DISABLE="1", **env)
    return run(["vagrant", "validate", "-p"], cwd=project, env=environ)


@pytest.mark.parametrize("workers", [None, "3"])
def test_vagrantfile_validates(tmp_path, vagrant_home, workers):
    env = {"KUBELAB_WORKERS": workers} if workers else {}
    p = validate(vagrant_copy(tmp_path), vagrant_home, **env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "validated successfully" in p.stdout
    machines = re.findall(r"^==> (\S+):", p.stdout, re.MULTILINE)
    want = ["master"] + [f"worker{i}" for i in range(1, int(workers or 2) + 1)]
    assert machines == want, p.stdout


def _drop_worker_script(project: Path) -> dict:
    (project / "deploy/vagrant/worker.sh").unlink()
    return {}


def _no_box(project: Path) -> dict:
    vf = project / "Vagrantfile"
    text = vf.read_text()
    assert "config.vm.box = BOX" in text
    vf.write_text(text.replace("config.vm.box = BOX", "config.vm.box = nil"))
    return {}


@pytest.mark.parametrize("breakage, message", [
    (_drop_worker_script, "deploy/vagrant/worker.sh"),
    (_no_box, "A box must be specified"),
    (lambda project: {"KUBELAB_WORKERS": "two"}, 'KUBELAB_WORKERS="two": want a whole number'),
    (lambda project: {"KUBELAB_MEMORY": "512"}, 'KUBELAB_MEMORY="512": want a whole number from 1024'),
], ids=["missing-script", "no-box", "bad-workers", "too-little-memory"])
def test_vagrantfile_broken_copy_fails(tmp_path, vagrant_home, breakage, message):
    project = vagrant_copy(tmp_path)
    env = breakage(project)
    p = validate(project, vagrant_home, **env)
    assert p.returncode != 0, p.stdout
    assert message in p.stdout + p.stderr


FAKE_COMMUNICATOR = r"""
# stands in for Vagrant's machine.communicate: files it has, others missing; output in pieces
class FakeCommunicator
  attr_reader :commands
  def initialize(files)
    @files = files
    @commands = []
  end

  def sudo(command, opts = {})
    @commands << [command, opts]
    name = File.basename(command.split(" ").last)
    unless @files.key?(name)
      yield :stderr, "cat: #{name}: No such file or directory"
      return 1
    end
    yield :stderr, "sudo: a warning"
    @files[name].scan(/.{1,7}/m).each { |piece| yield :stdout, piece }
    0
  end
end
"""

HANDOVER_PROBE = r"""
require "json"
require ARGV[0]
""" + FAKE_COMMUNICATOR + r"""
comm = FakeCommunicator.new(JSON.parse(ARGV[2]))
copied = KubelabHandover.fetch(Struct.new(:communicate).new(comm), ARGV[1])
KubelabHandover.clear(ARGV[1]) if ARGV[3] == "clear"
puts JSON.generate({"copied" => copied, "commands" => comm.commands})
"""

# Loads the Vagrantfile with Vagrant's configuration API stood in by a recorder: each setting or
# call lands in CALLS under the scope it was made in ("vm", "master.vm", "virtualbox", ...); the
# trigger blocks named in ARGV[2] (a JSON list) then run against a stand-in master.
VAGRANTFILE_PROBE = r"""
require "json"
""" + FAKE_COMMUNICATOR + r"""
CALLS = []
TRIGGERS = {}
class Recorder
  def initialize(scope, triggers = nil)
    @scope = scope
    @triggers = triggers
  end

  def respond_to_missing?(*) = true

  def method_missing(name, *args, **opts, &blk)
    name = name.to_s
    return TRIGGERS[@triggers] = blk if name == "ruby" && @triggers
    CALLS << {"scope" => @scope, "call" => name, "args" => args.map(&:to_s), "opts" => opts} unless args.empty? && opts.empty?
    child = if %w[define provider].include?(name) then Recorder.new(args.first.to_s)
            elsif @scope.end_with?("trigger") then Recorder.new(@scope, "#{@scope}.#{name}(#{args.first.inspect})")
            else Recorder.new([@scope, name].reject(&:empty?).join("."))
            end
    blk&.call(child)
    child
  end
end
module Vagrant
  def self.configure(_version) = yield(Recorder.new(""))
end
load ARGV[0]
comm = FakeCommunicator.new(JSON.parse(ARGV[1]))
JSON.parse(ARGV[2]).each { |t| TRIGGERS.fetch(t).call(nil, Struct.new(:communicate).new(comm)) }
puts JSON.generate({"calls" => CALLS, "triggers" => TRIGGERS.keys, "no_parallel" => ENV["VAGRANT_NO_PARALLEL"]})
"""


def need_ruby() -> None:
    if not shutil.which("ruby"):
        pytest.fail("ruby is missing (it comes with the vagrant package: make install)")


def load_vagrantfile(project: Path, guest_files: dict | None = None, run_triggers: tuple = (), **env) -> dict:
    """The Vagrantfile's settings, per scope: {scope: [(call, args, opts), ...]}, and its triggers."""
    need_ruby()
    probe = project / "probe.rb"
    probe.write_text(VAGRANTFILE_PROBE)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KUBELAB_", "VAGRANT_"))}
    environ.update(env)
    p = run(["ruby", str(probe), str(project / "Vagrantfile"), json.dumps(guest_files or {}),
             json.dumps(list(run_triggers))], env=environ, cwd=project)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    scopes: dict[str, list] = {}
    for c in got["calls"]:
        scopes.setdefault(c["scope"], []).append((c["call"], c["args"], c["opts"]))
    return {"scopes": scopes, "triggers": got["triggers"], "no_parallel": got["no_parallel"]}


@pytest.mark.parametrize("env", [{}, {"KUBELAB_WORKERS": "3", "KUBELAB_CPUS": "4", "KUBELAB_MEMORY": "4096",
                                      "KUBELAB_BOX": "debian/testing64"}], ids=["defaults", "from-env"])
def test_vagrantfile_machines_and_their_provisioning(tmp_path, env):
    got = load_vagrantfile(vagrant_copy(tmp_path), **env)
    scopes = got["scopes"]
    workers, cpus, memory = int(env.get("KUBELAB_WORKERS", 2)), env.get("KUBELAB_CPUS", "2"), env.get("KUBELAB_MEMORY", "2048")
    # every VM: the box, the install script first (outer-scope provisioners run before a machine's own)
    assert scopes["vm"] == [
        ("box=", [env.get("KUBELAB_BOX", "debian/bookworm64")], {}),
        ("provider", ["virtualbox"], {}), ("provider", ["libvirt"], {}),
        ("provision", ["install"], {"type": "shell", "path": "deploy/install.sh", "args": ["/vagrant"]}),
        ("define", ["master"], {"primary": True}),
        *[("define", [f"worker{i}"], {}) for i in range(1, workers + 1)]]
    for provider in ("virtualbox", "libvirt"):
        assert scopes[provider] == [("cpus=", [cpus], {}), ("memory=", [memory], {})]
    machines = {"master": ("192.168.56.10", "init", "deploy/vagrant/master.sh")}
    machines |= {f"worker{i}": (f"192.168.56.{10 + i}", "join", "deploy/vagrant/worker.sh") for i in range(1, workers + 1)}
    for name, (ip, step, script) in machines.items():
        assert scopes[f"{name}.vm"] == [
            ("hostname=", [name], {}),
            ("network", ["private_network"], {"ip": ip}),
            ("provision", [step], {"type": "shell", "path": script, "args": [ip], "env": {"KUBELAB_SRC": "/vagrant"}})]
    assert not [s for s in scopes if s.startswith(f"worker{workers + 1}")]
    # workers need the master's token: one machine after another
    assert got["no_parallel"] == "yes"


def test_vagrantfile_triggers_carry_the_handover_to_the_host(tmp_path):
    project = vagrant_copy(tmp_path)
    up, destroy = "master.trigger.after([:up, :provision])", "master.trigger.after(:destroy)"
    got = load_vagrantfile(project, {"join.sh": "exec kubelab join x\n", "admin.conf": "kind: Config\n"}, (up,))
    assert got["triggers"] == [up, destroy]
    host = project / ".kubelab"
    assert (host / "join.sh").read_text() == "exec kubelab join x\n"
    assert (host / "admin.conf").read_text() == "kind: Config\n"
    load_vagrantfile(project, {}, (destroy,))
    assert list(host.iterdir()) == []


def handover(tmp_path: Path, guest_files: dict, *extra: str) -> dict:
    """deploy/vagrant/handover.rb (the Vagrantfile's trigger code) against a stand-in machine."""
    need_ruby()
    probe = tmp_path / "probe.rb"
    probe.write_text(HANDOVER_PROBE)
    p = run(["ruby", str(probe), str(DEPLOY / "vagrant/handover.rb"), str(tmp_path / ".kubelab"),
             json.dumps(guest_files), *extra])
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_handover_copies_the_masters_files_to_the_host(tmp_path):
    join = f"#!/bin/sh\nexec kubelab join 192.168.56.10:6443 --token {TOKEN} ... \"$@\"\n"
    got = handover(tmp_path, {"join.sh": join, "admin.conf": "apiVersion: v1\nkind: Config\n"})
    assert got == {"copied": ["join.sh", "admin.conf"], "commands": [
        ["cat /vagrant/.kubelab/join.sh", {"error_check": False}],
        ["cat /vagrant/.kubelab/admin.conf", {"error_check": False}]]}
    host = tmp_path / ".kubelab"
    assert sorted(p.name for p in host.iterdir()) == ["admin.conf", "join.sh"]
    assert (host / "join.sh").read_text() == join
    assert (host / "admin.conf").read_text() == "apiVersion: v1\nkind: Config\n"
    assert all((host / n).stat().st_mode & 0o777 == 0o600 for n in ("join.sh", "admin.conf"))


def test_handover_leaves_out_what_the_master_lacks_and_clears(tmp_path):
    host = tmp_path / ".kubelab"
    host.mkdir()
    (host / "admin.conf").write_text("the host's own\n")
    got = handover(tmp_path, {"join.sh": "exec kubelab join x\n"})
    assert got["copied"] == ["join.sh"]
    assert (host / "admin.conf").read_text() == "the host's own\n"  # not emptied
    got = handover(tmp_path, {"join.sh": "exec kubelab join x\n"}, "clear")
    assert list(host.iterdir()) == []


# ---- scripts and units

SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


def test_deploy_has_the_scripts():
    names = {str(s.relative_to(DEPLOY)) for s in SCRIPTS}
    assert {"install.sh", "vagrant/common.sh", "vagrant/master.sh", "vagrant/worker.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: str(s.relative_to(DEPLOY)))
def test_script_parses(script):
    p = run(["bash", "-n", str(script)])
    assert p.returncode == 0, p.stderr


def test_scripts_pass_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is not installed: `make install` installs it (Makefile APT_TEST_PACKAGES)")
    p = run(["shellcheck", "-x", "-f", "gcc", *map(str, SCRIPTS)], cwd=DEPLOY)
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


def unit_keys(path: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order, as systemd reads a unit (a key may repeat)."""
    keys: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault((section, key.strip()), []).append(value.strip())
    return keys


@pytest.mark.parametrize("unit, command", UNITS.items())
def test_unit_has_the_service_interface(unit, command):
    """What kubeadm/services.py writes and expects: the flags file as EnvironmentFile, the
    command with $KUBELAB_ARGS unbraced (so systemd splits it into words), restarts, and no
    start at all before init/join wrote the flags file."""
    keys = unit_keys(DEPLOY / "systemd" / f"{unit}.service")
    flags = f"/var/lib/kubelab/{unit}.env"
    assert keys[("Service", "EnvironmentFile")] == [flags]
    assert keys[("Service", "ExecStart")] == [f"/opt/kubelab/venv/bin/kubelab {command} $KUBELAB_ARGS"]
    assert keys[("Service", "Restart")] == ["always"]
    assert keys[("Service", "RestartSec")]
    assert keys[("Unit", "ConditionPathExists")] == [flags]
    assert keys[("Install", "WantedBy")] == ["multi-user.target"]


def test_kubelet_unit_comes_after_the_runtime():
    keys = unit_keys(DEPLOY / "systemd" / "kubelab-kubelet.service")
    for key in ("After", "Wants"):
        assert "kubelab-runtime.service" in " ".join(keys[("Unit", key)]).split()


def test_runtime_unit_leaves_containers_running():
    # the daemon adopts running containers after a restart: systemd must not kill its conmons
    keys = unit_keys(DEPLOY / "systemd" / "kubelab-runtime.service")
    assert keys[("Service", "KillMode")] == ["process"]


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    """A root for `systemd-analyze verify --root`: this host's stock units (the targets the
    units name) and an executable where ExecStart points, as install.sh leaves it."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    root = tmp_path_factory.mktemp("unitroot")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "opt/kubelab/venv/bin/kubelab"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies(unit_root, unit):
    target = unit_root / "etc/systemd/system" / f"{unit}.service"
    shutil.copy(DEPLOY / "systemd" / f"{unit}.service", target)
    try:
        p = run(["systemd-analyze", "verify", f"--root={unit_root}", f"{unit}.service"])
    finally:
        target.unlink()
    # systemd only warns (exit 0) on an unknown key or a bad value: any output is a failure
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """deploy/install.sh run twice into a prefix of the test's own (the venv, the link and the
    units where /opt/kubelab, /usr/local/bin and /etc/systemd/system would be; the kernel's
    modules and sysctls left alone). Every apt package is there already (`make install`), so
    apt is not asked; pip installs from this machine's own configuration, as make install does."""
    need_root()
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAB_")}
    env.update(KUBELAB_PREFIX=str(root / "opt/kubelab"), KUBELAB_UNIT_DIR=str(root / "units"),
               KUBELAB_BIN_LINK=str(root / "bin/kubelab"), KUBELAB_NO_KERNEL="1")
    try:
        runs = [subprocess.run(["bash", str(DEPLOY / "install.sh"), str(REPO)], capture_output=True, text=True,
                               env=env, timeout=600, check=False) for _ in range(2)]
        yield root, runs
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_install_sh_installs_the_project_in_a_venv(installed):
    root, (first, _) = installed
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[kubelab install] apt packages: all there" in first.stdout
    venv_kubelab = root / "opt/kubelab/venv/bin/kubelab"
    assert os.readlink(root / "bin/kubelab") == str(venv_kubelab)
    p = run([str(root / "bin/kubelab"), "--help"])
    assert p.returncode == 0 and "Usage: kubelab COMMAND" in p.stdout, p.stderr
    # the installed code is the copy in the prefix, protos compiled there, not the checkout's
    where = run([str(root / "opt/kubelab/venv/bin/python"), "-c",
                 "import kubelab.api.v1.objects_pb2 as m, kubeadm; print(m.__file__); print(kubeadm.__file__)"],
                cwd="/")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(root / "opt/kubelab/src") + "/") for line in where.stdout.split())
    src = root / "opt/kubelab/src"
    assert not (src / ".git").exists() and not (src / ".venv").exists()
    for unit in UNITS:
        assert (root / "units" / f"{unit}.service").read_bytes() == (DEPLOY / "systemd" / f"{unit}.service").read_bytes()


def test_install_sh_twice_is_fine(installed):
    root, (_, second) = installed
    assert second.returncode == 0, second.stdout + second.stderr
    assert "[kubelab install] done: kubelab is ready" in second.stdout
    assert os.readlink(root / "bin/kubelab") == str(root / "opt/kubelab/venv/bin/kubelab")


def test_install_sh_refuses_a_directory_that_is_no_checkout(tmp_path):
    need_root()
    p = run(["bash", str(DEPLOY / "install.sh"), str(tmp_path)])
    assert p.returncode == 1
    assert f"{tmp_path} is not a kubelab checkout" in p.stderr


# ---- node address and interface, in a namespace laid out like a Vagrant VM

@pytest.fixture(scope="module")
def vm_netns():
    """eth0 holds the NAT address every Vagrant VM has (and comes first), eth1 the private one."""
    need_root()
    name = f"klv-deploy-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for dev, peer, addr in (("eth0", "nat0", "10.0.2.15/24"), ("eth1", "priv0", "192.168.67.11/24")):
            subprocess.run(["ip", "-n", name, "link", "add", dev, "type", "veth", "peer", "name", peer], check=True)
            subprocess.run(["ip", "-n", name, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def in_vm(netns: str, script: str, *args: str, hostname: str = "worker1", env: dict | None = None):
    """Run bash SCRIPT ARGS inside the namespace, with a UTS namespace of its own for the hostname."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAB_")}
    environ.update(env or {})
    argv = ["ip", "netns", "exec", netns, "unshare", "--uts", "--",
            "bash", "-c", 'hostname "$0" && exec bash "$@"', hostname, script, *args]
    return run(argv, env=environ)


@pytest.mark.parametrize("want", ["192.168.67.0/24", "192.168.67.11"])
def test_private_address_is_never_the_nat_interface(vm_netns, tmp_path, want):
    probe = tmp_path / "probe.sh"
    probe.write_text(f'source {DEPLOY}/vagrant/common.sh\nprivate_address "$1"\n')
    p = in_vm(vm_netns, str(probe), want)
    assert (p.returncode, p.stdout) == (0, "eth1 192.168.67.11\n"), p.stderr


@pytest.mark.parametrize("want, message", [
    ("192.168.56.0/24", "no interface of worker1 holds an address in 192.168.56.0/24"),
    ("192.168.67.12", "no interface of worker1 holds an address in 192.168.67.12"),
    ("192.168.67.0/33", '"192.168.67.0/33" is not an IPv4 address or network'),
    ("eth1", '"eth1" is not an IPv4 address or network'),
])
def test_private_address_errors(vm_netns, tmp_path, want, message):
    probe = tmp_path / "probe.sh"
    probe.write_text(f'source {DEPLOY}/vagrant/common.sh\nprivate_address "$1"\necho unreachable\n')
    p = in_vm(vm_netns, str(probe), want)
    assert p.returncode == 1 and "unreachable" not in p.stdout
    assert message in p.stderr


FAKE_CLI = f"""#!/bin/bash
# stands in for `kubelab`: records its argv, answers as init / token / join would
printf '%s\\n' "$*" >>"$FAKE_LOG"
etc=/etc/kubelab
for a; do case $a in --etc-dir=*) etc=${{a#--etc-dir=}} ;; esac; done
case "$1 $2" in
  init\\ *)
    mkdir -p "$etc" && echo "fake admin.conf" >"$etc/admin.conf"
    echo "[init] Using Kubernetes-shaped version: kubelab"
    echo "Then you can join any number of worker nodes by running the following on each as root:"
    echo
    echo "kubelab join 192.168.67.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH}" ;;
  "token list") printf 'TOKEN                     TTL\\n%s   23h\\n' "${{FAKE_LIVE_TOKEN:-none}}" ;;
  "token create") echo "kubelab join 192.168.67.10:6443 --token zyxwvu.0123456789abcdef --discovery-token-ca-cert-hash {HASH}" ;;
  join\\ *)
    [ -z "${{FAKE_JOIN_ERROR:-}}" ] || {{ echo "$FAKE_JOIN_ERROR" >&2; exit 1; }}
    mkdir -p "$etc" && echo "fake kubelet.conf" >"$etc/kubelet.conf" ;;
esac
"""


@pytest.fixture
def node(tmp_path):
    """A synced folder, an etc dir, and the recording CLI for one run of the node scripts."""
    cli = tmp_path / "kubelab"
    cli.write_text(FAKE_CLI)
    cli.chmod(0o755)
    env = {"KUBELAB": str(cli), "FAKE_LOG": str(tmp_path / "calls"), "KUBELAB_SYNC_DIR": str(tmp_path / "vagrant"),
           "KUBELAB_ETC_DIR": str(tmp_path / "etc"), "KUBELAB_VAR_DIR": str(tmp_path / "var")}
    (tmp_path / "vagrant").mkdir()
    return env


def calls(env) -> list[str]:
    log = Path(env["FAKE_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_master_inits_on_the_private_network_and_hands_over(vm_netns, node):
    p = in_vm(vm_netns, str(DEPLOY / "vagrant/master.sh"), "192.168.67.11", hostname="master", env=node)
    assert p.returncode == 0, p.stdout + p.stderr
    etc, var = node["KUBELAB_ETC_DIR"], node["KUBELAB_VAR_DIR"]
    assert calls(node) == [(f"init --apiserver-advertise-address 192.168.67.11 --iface eth1 --node-name master "
                            f"--etc-dir={etc} --var-dir={var}")]
    handover = Path(node["KUBELAB_SYNC_DIR"]) / ".kubelab"
    join = (handover / "join.sh").read_text()
    assert f'exec kubelab join 192.168.67.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH} "$@"\n' in join
    assert (handover / "admin.conf").read_text() == "fake admin.conf\n"
    assert (handover / "join.sh").stat().st_mode & 0o077 == 0 and (handover / "admin.conf").stat().st_mode & 0o077 == 0

    # a second provisioning of a master whose token is still known changes nothing
    before = join
    p = in_vm(vm_netns, str(DEPLOY / "vagrant/master.sh"), "192.168.67.11", hostname="master",
              env=dict(node, FAKE_LIVE_TOKEN=TOKEN))
    assert p.returncode == 0, p.stderr
    assert "nothing to do" in p.stdout
    assert calls(node)[1:] == ["token list"]
    assert (handover / "join.sh").read_text() == before

    # ... and once that token is gone, a fresh one goes into the hand-over for late workers
    p = in_vm(vm_netns, str(DEPLOY / "vagrant/master.sh"), "192.168.67.11", hostname="master", env=node)
    assert p.returncode == 0, p.stderr
    assert calls(node)[2:] == ["token list", "token create --print-join-command"]
    assert "--token zyxwvu.0123456789abcdef " in (handover / "join.sh").read_text()


def test_worker_joins_with_the_masters_command_and_its_own_address(vm_netns, node):
    master = in_vm(vm_netns, str(DEPLOY / "vagrant/master.sh"), "192.168.67.0/24", hostname="master", env=node)
    assert master.returncode == 0, master.stderr
    Path(node["FAKE_LOG"]).unlink()
    Path(node["KUBELAB_ETC_DIR"], "admin.conf").unlink()  # the worker is another machine

    p = in_vm(vm_netns, str(DEPLOY / "vagrant/worker.sh"), "192.168.67.11", hostname="worker1", env=node)
    assert p.returncode == 0, p.stdout + p.stderr
    etc, var = node["KUBELAB_ETC_DIR"], node["KUBELAB_VAR_DIR"]
    assert calls(node) == [(f"join 192.168.67.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH} "
                            f"--node-ip 192.168.67.11 --iface eth1 --node-name worker1 --etc-dir={etc} --var-dir={var}")]

    # joined: provisioning again does nothing
    p = in_vm(vm_netns, str(DEPLOY / "vagrant/worker.sh"), "192.168.67.11", hostname="worker1", env=node)
    assert p.returncode == 0 and "nothing to do" in p.stdout
    assert len(calls(node)) == 1


def test_worker_whose_join_fails_says_how_to_get_a_fresh_token(vm_netns, node):
    master = in_vm(vm_netns, str(DEPLOY / "vagrant/master.sh"), "192.168.67.11", hostname="master", env=node)
    assert master.returncode == 0, master.stderr
    Path(node["KUBELAB_ETC_DIR"], "admin.conf").unlink()
    p = in_vm(vm_netns, str(DEPLOY / "vagrant/worker.sh"), "192.168.67.11", hostname="worker3",
              env=dict(node, FAKE_JOIN_ERROR="error execution phase preflight: the token has expired"))
    assert p.returncode == 1
    assert "the token has expired" in p.stderr
    assert "vagrant provision master, then vagrant rsync worker3 && vagrant provision worker3" in p.stderr


def test_worker_without_a_join_command_gives_up_with_the_fix(vm_netns, node):
    p = in_vm(vm_netns, str(DEPLOY / "vagrant/worker.sh"), "192.168.67.11", hostname="worker2",
              env=dict(node, KUBELAB_JOIN_WAIT="1"))
    assert p.returncode == 1
    assert "no join command in" in p.stderr and "vagrant up master" in p.stderr
    assert "vagrant rsync worker2 && vagrant provision worker2" in p.stderr
    assert calls(node) == []


@pytest.mark.parametrize("line", [
    "exec kubelab join 192.168.67.10:6443 --token",
    f'exec kubelab join 192.168.67.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:XYZ "$@"',
    f'exec kubelab join 192.168.67.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH} "$@"; reboot',
], ids=["truncated", "bad-hash", "extra-command"])
def test_worker_refuses_a_malformed_join_file(vm_netns, node, line):
    handover = Path(node["KUBELAB_SYNC_DIR"]) / ".kubelab"
    handover.mkdir()
    (handover / "join.sh").write_text(f"#!/bin/sh\n{line}\n")
    p = in_vm(vm_netns, str(DEPLOY / "vagrant/worker.sh"), "192.168.67.11", env=node)
    assert p.returncode == 1 and "holds no join command" in p.stderr
    assert calls(node) == []


# ---- the same scripts for real: init and join in a bare lab, the synced folder a temp dir

LAB_DIR = Path("/tmp/lab-v")
PREFIX, BRIDGE, SUBNET = "klv", "klv0", "192.168.67.0/24"
MASTER, WORKER = f"{PREFIX}-master", f"{PREFIX}-worker1"
KUBELAB = [sys.executable, "-m", "kubelab.cli.main"]


@pytest.fixture(scope="module")
def bare_lab(tmp_path_factory):
    """`kubelab lab up --bare --workers 1` on this role's names; `lab down` (which resets every
    VM) whatever happens, then nothing of it may be left on the host."""
    need_root()
    sync = tmp_path_factory.mktemp("synced")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAB_")}
    env["KUBELAB_SYNC_DIR"] = str(sync)

    def lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*KUBELAB, "lab", args[0], "--lab-dir", str(LAB_DIR), *args[1:]],
                              capture_output=True, text=True, env=env, timeout=timeout, check=False)
    up = lab("up", "--bare", "--workers", "1", "--prefix", PREFIX, "--bridge", BRIDGE, "--subnet", SUBNET)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield lab, sync
    finally:
        down = lab("down")
        assert down.returncode == 0, down.stdout + down.stderr
        netns = run(["ip", "netns", "list"]).stdout
        assert not {MASTER, WORKER} & set(netns.split()), netns
        assert run(["ip", "link", "show", BRIDGE]).returncode != 0


def test_master_and_worker_scripts_make_a_cluster(bare_lab):
    lab, sync = bare_lab
    master = lab("shell", MASTER, "--", "bash", str(DEPLOY / "vagrant/master.sh"), "192.168.67.0/24")
    assert master.returncode == 0, master.stdout + master.stderr
    handover = sync / ".kubelab"
    admin = handover / "admin.conf"
    # kubectl's server is the HTTP face; kubelab's own clients find gRPC in the extension
    assert "server: https://192.168.67.10:6444\n" in admin.read_text()
    assert "- name: kubelab.dev/grpc\n      extension:\n        server: 192.168.67.10:6443\n" in admin.read_text()
    join = (handover / "join.sh").read_text()

    worker = lab("shell", WORKER, "--", "bash", str(DEPLOY / "vagrant/worker.sh"), "192.168.67.11")
    assert worker.returncode == 0, worker.stdout + worker.stderr

    # the host's CLI with the handed-over admin.conf, as on a Vagrant host
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAB_")}
    env["KUBELAB_CONFIG"] = str(admin)

    def node(name: str) -> dict | None:
        p = run([*KUBELAB, "get", "node", name, "-o", "json"], env=env)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def ready(name: str) -> dict | None:
        n = node(name)
        conds = (n or {}).get("status", {}).get("conditions", [])
        return n if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else None

    deadline = time.monotonic() + 90
    while not (ready(MASTER) and ready(WORKER)):
        assert time.monotonic() < deadline, f"nodes not Ready after 90s: {node(MASTER)} {node(WORKER)}"
        time.sleep(0.5)
    addresses = {n: [a["address"] for a in node(n)["status"]["addresses"] if a["type"] == "InternalIP"]
                 for n in (MASTER, WORKER)}
    assert addresses == {MASTER: ["192.168.67.10"], WORKER: ["192.168.67.11"]}

    # provisioning both again changes nothing: no second init or join, the same live token
    again = lab("shell", WORKER, "--", "bash", str(DEPLOY / "vagrant/worker.sh"), "192.168.67.11")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    again = lab("shell", MASTER, "--", "bash", str(DEPLOY / "vagrant/master.sh"), "192.168.67.10")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert (handover / "join.sh").read_text() == join
