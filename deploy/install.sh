#!/bin/bash
# Installs kubelab on a Debian/Ubuntu machine (a Vagrant VM, or any host meant to become a
# node), as root: the apt packages of the Makefile's APT_PACKAGES (the one list, shared with
# `make install`), the project copied to /opt/kubelab/src with its venv at /opt/kubelab/venv,
# /usr/local/bin/kubelab, the kernel modules and sysctls a node needs, and the systemd units of
# the node daemons, installed but not started: `kubelab init` / `kubelab join` start them once
# they have written their flags. Idempotent: a second run only brings the copy up to date.
#
#   deploy/install.sh [SOURCE_DIR]      (default: the checkout this script is in, e.g. /vagrant)
#
# Offline: apt is not asked anything when every package is there already; pip reads its own
# environment, so PIP_NO_INDEX=1 PIP_FIND_LINKS=/vagrant/wheels installs from a wheelhouse.
set -euo pipefail
src=$(cd "${1:-$(dirname "$(readlink -f "$0")")/..}" && pwd)
PREFIX=${KUBELAB_PREFIX:-/opt/kubelab}
UNIT_DIR=${KUBELAB_UNIT_DIR:-/etc/systemd/system}
BIN_LINK=${KUBELAB_BIN_LINK:-/usr/local/bin/kubelab}

say() { echo "[kubelab install] $*"; }
die() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "install.sh needs root (apt, /opt, systemd units): sudo $0"
if [ ! -f "$src/Makefile" ] || [ ! -f "$src/pyproject.toml" ]; then
  die "$src is not a kubelab checkout (no Makefile/pyproject.toml)"
fi
command -v apt-get >/dev/null || die "install.sh is for Debian/Ubuntu (no apt-get here)"

# the Makefile's list holds what running the Makefile needs too (make, python3-venv, rsync)
apt_packages=$(sed -n 's/^APT_PACKAGES[[:space:]]*:=[[:space:]]*//p' "$src/Makefile")
[ -n "$apt_packages" ] || die "no APT_PACKAGES := ... line in $src/Makefile"
missing=""
for p in $apt_packages; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing apt packages:$missing"
  apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
  say "apt packages: all there"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "kubelab needs Python >= 3.11; this python3 is $(python3 -V 2>&1) (Debian 12 and Ubuntu 24.04 have 3.11+)"

# A copy, not the synced folder itself: an rsync synced folder is overwritten (with --delete)
# at every `vagrant rsync`, which would take the generated protos away from under the venv,
# and a shared folder would put this VM's build files into the host's checkout.
say "copying $src to $PREFIX/src"
mkdir -p "$PREFIX/src"
rsync -a --delete --exclude=.git/ --exclude=.venv/ --exclude=.vagrant/ --exclude=.kubelab/ \
  --exclude=__pycache__/ --exclude='*.egg-info/' --exclude='*_pb2*.py*' --exclude=.pytest_cache/ \
  "$src/" "$PREFIX/src/"
# the Makefile's own venv and protos steps, with the venv where the systemd units expect it
say "venv $PREFIX/venv (pip install of the project, protos compiled)"
make -s -C "$PREFIX/src" venv protos VENV="$PREFIX/venv" PY=python3
[ -x "$PREFIX/venv/bin/kubelab" ] || die "$PREFIX/venv/bin/kubelab was not installed"
mkdir -p "$(dirname "$BIN_LINK")"
ln -sfn "$PREFIX/venv/bin/kubelab" "$BIN_LINK"
say "$BIN_LINK -> $PREFIX/venv/bin/kubelab"

# what a node's pod network and overlay need from the kernel, now and after a reboot (the
# same prerequisites kubeadm's docs list); init's preflight says which one is missing
if [ -z "${KUBELAB_NO_KERNEL:-}" ]; then
  mkdir -p /etc/modules-load.d /etc/sysctl.d
  printf '%s\n' overlay br_netfilter vxlan >/etc/modules-load.d/kubelab.conf
  printf '%s\n' net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 >/etc/sysctl.d/99-kubelab.conf
  for m in overlay br_netfilter vxlan; do
    modprobe "$m" 2>/dev/null || say "modprobe $m failed (built in, or missing: init's preflight will tell)"
  done
  sysctl -q -p /etc/sysctl.d/99-kubelab.conf || say "some sysctls did not apply (init's preflight will tell)"
fi

mkdir -p "$UNIT_DIR"
for unit in kubelab-runtime.service kubelab-kubelet.service; do
  install -m 0644 "$src/deploy/systemd/$unit" "$UNIT_DIR/$unit"
done
if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
  systemctl daemon-reload
fi
say "systemd units in $UNIT_DIR (not started: kubelab init / kubelab join start them)"
say "done: $("$BIN_LINK" --help >/dev/null 2>&1 && echo "kubelab is ready" || echo "kubelab --help failed")"
