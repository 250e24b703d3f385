# shellcheck shell=bash
# Shared by master.sh and worker.sh (sourced, never run): where the kubelab CLI and the synced
# folder are, and which of the machine's interfaces is the private network's.
#
# On a Vagrant VM the first interface is the NAT one, 10.0.2.15 on every VM alike; a node that
# took it as its node IP would hand its peers an address that leads back to themselves (logs,
# exec and the overlay's VXLAN underlay all break). The node's address is therefore chosen by
# the private network alone, and the interface is the one that holds that address.

# the CLI: install.sh links it at /usr/local/bin/kubelab; tests and the local lab put a venv's on PATH
KUBELAB=${KUBELAB:-$(command -v kubelab || echo /opt/kubelab/venv/bin/kubelab)}
# the folder Vagrant syncs from the host, and the hand-over directory in it (join.sh, admin.conf)
KUBELAB_SYNC_DIR=${KUBELAB_SYNC_DIR:-/vagrant}
# shellcheck disable=SC2034 # used by master.sh and worker.sh
HANDOVER=$KUBELAB_SYNC_DIR/.kubelab
# where init/join leave their files (the hidden --etc-dir and --var-dir of init/join, for tests)
KUBELAB_ETC_DIR=${KUBELAB_ETC_DIR:-/etc/kubelab}
KUBELAB_VAR_DIR=${KUBELAB_VAR_DIR:-/var/lib/kubelab}

say() { echo "[kubelab $(basename "$0" .sh)] $*"; }
die() { echo "error: $*" >&2; exit 1; }

# init's and join's --etc-dir/--var-dir flags, only when a test moved the directories
dir_flags() {
  [ "$KUBELAB_ETC_DIR" = /etc/kubelab ] || echo "--etc-dir=$KUBELAB_ETC_DIR"
  [ "$KUBELAB_VAR_DIR" = /var/lib/kubelab ] || echo "--var-dir=$KUBELAB_VAR_DIR"
}

ip_to_int() {
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

valid_ipv4() {
  local o
  [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
  for o in ${1//./ }; do ((10#$o <= 255)) || return 1; done
}

# private_address WANT: print "IFACE IP" for this machine's IPv4 address that is WANT (an
# address: the Vagrantfile's private_network ip) or lies inside WANT (a network, a.b.c.d/len).
# The first interface holding a match wins; no match is an error naming what was looked for,
# never a fallback to the default route's interface (that is the NAT one on Vagrant).
private_address() {
  local want=$1 net len mask ifname cidr ip
  case $want in
    */*) net=${want%/*} len=${want#*/} ;;
    *) net=$want len=32 ;;
  esac
  if ! valid_ipv4 "$net" || ! [[ $len =~ ^[0-9]+$ ]] || ((len > 32)); then
    die "\"$want\" is not an IPv4 address or network (want e.g. 192.168.56.10 or 192.168.56.0/24)"
  fi
  mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
  # `ip -o -4 addr show`: "2: eth1    inet 192.168.56.11/24 brd ... scope global eth1 ..."
  while read -r _ ifname _ cidr _; do
    ip=${cidr%/*}
    if (((($(ip_to_int "$ip") ^ $(ip_to_int "$net")) & mask) == 0)); then
      echo "${ifname%%@*} $ip"
      return 0
    fi
  done < <(ip -o -4 addr show)
  die "no interface of $(hostname) holds an address in $want (the private network); interfaces: $(ip -o -4 addr show | awk '{printf "%s %s; ", $2, $4}')"
}
