#!/bin/bash
# Vagrant provisioning of the master: `master.sh [PRIVATE_IP | NETWORK]` (default the Vagrant
# lab's 192.168.56.0/24) runs `kubelab init` on the private network's address and interface,
# then hands the cluster over through the synced folder: .kubelab/join.sh (the join command
# init printed, for the workers) and .kubelab/admin.conf (for the host's CLI).
# The work is all `kubelab init`'s, the same command a person types in `kubelab lab up --bare`;
# this script only picks its flags. Idempotent: on an initialised master it only makes sure the
# hand-over holds a token the cluster still knows (tokens live 24 h), so that re-provisioning
# the master is how a late worker gets a fresh join command.
set -euo pipefail
src=${KUBELAB_SRC:-$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)}
# shellcheck source=SCRIPTDIR/common.sh
source "$src/deploy/vagrant/common.sh"

[ $# -le 1 ] || die "usage: master.sh [PRIVATE_IP | NETWORK] (default 192.168.56.0/24)"
addr=$(private_address "${1:-192.168.56.0/24}")
read -r iface ip <<<"$addr"
node=$(hostname)

# join.sh is a script a person can also run by hand on a new node, adding that node's flags
write_join() {
  [[ $1 =~ ^kubelab\ join\ [^\ ]+\ --token\ [^\ ]+\ --discovery-token-ca-cert-hash\ sha256:[0-9a-f]+$ ]] ||
    die "not a join command: \"$1\" (want: kubelab join HOST:6443 --token T --discovery-token-ca-cert-hash sha256:HEX)"
  mkdir -p "$HANDOVER"
  (umask 077 && cat >"$HANDOVER/join.sh.tmp" <<J
#!/bin/sh
# The join command of the kubelab cluster on $node (deploy/vagrant/master.sh, $(date -u +%FT%TZ)).
# As root on a new node, adding its private address and interface:
#   sh join.sh --node-ip IP --iface IF [--node-name NAME]
exec $1 "\$@"
J
  )
  mv "$HANDOVER/join.sh.tmp" "$HANDOVER/join.sh"
  say "wrote $HANDOVER/join.sh"
}

copy_admin_conf() {
  install -m 0600 "$KUBELAB_ETC_DIR/admin.conf" "$HANDOVER/admin.conf"
  say "wrote $HANDOVER/admin.conf (on the host: kubelab --config .kubelab/admin.conf get nodes)"
}

if [ -f "$KUBELAB_ETC_DIR/admin.conf" ]; then
  export KUBELAB_CONFIG=$KUBELAB_ETC_DIR/admin.conf
  token=$(sed -n 's/.* --token \([^ ]*\) .*/\1/p' "$HANDOVER/join.sh" 2>/dev/null || true)
  if [ -n "$token" ] && "$KUBELAB" token list 2>/dev/null | grep -qF "${token%%.*}"; then
    say "$node is initialised and $HANDOVER/join.sh holds a live token: nothing to do"
  else
    say "$node is initialised; the hand-over has no live token: creating one"
    write_join "$("$KUBELAB" token create --print-join-command)"
  fi
  copy_admin_conf
  exit 0
fi

# a join.sh left by an earlier master must not reach a worker while this one initialises
rm -f "$HANDOVER/join.sh" "$HANDOVER/admin.conf"
say "kubelab init on $node: node IP $ip on $iface (the private network, not the NAT interface)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# shellcheck disable=SC2046 # dir_flags prints whole flags, one per line, or nothing
"$KUBELAB" init --apiserver-advertise-address "$ip" --iface "$iface" --node-name "$node" $(dir_flags) | tee "$log"
join=$(sed -n 's/^[[:space:]]*\(kubelab join [^ ]* --token .*\)$/\1/p' "$log" | tail -n 1)
[ -n "$join" ] || die "kubelab init ended without printing the join command (its output is above)"
write_join "$join"
copy_admin_conf
