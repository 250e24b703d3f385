#!/bin/bash
# Vagrant provisioning of a worker: `worker.sh [PRIVATE_IP | NETWORK]` (default the Vagrant
# lab's 192.168.56.0/24) waits, bounded, for the master's join command in the synced folder
# (.kubelab/join.sh, written by master.sh), then runs it as `kubelab join ...` with this VM's
# private address and interface and its hostname as the node name.
# The work is all `kubelab join`'s, the same command a person types in `kubelab lab up --bare`.
# Idempotent: a node that has joined (its kubelet.conf exists) is left as it is.
set -euo pipefail
src=${KUBELAB_SRC:-$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)}
# shellcheck source=SCRIPTDIR/common.sh
source "$src/deploy/vagrant/common.sh"

[ $# -le 1 ] || die "usage: worker.sh [PRIVATE_IP | NETWORK] (default 192.168.56.0/24)"
addr=$(private_address "${1:-192.168.56.0/24}")
read -r iface ip <<<"$addr"
node=$(hostname)

if [ -f "$KUBELAB_ETC_DIR/kubelet.conf" ]; then
  say "$node has joined already ($KUBELAB_ETC_DIR/kubelet.conf exists): nothing to do"
  exit 0
fi

wait_s=${KUBELAB_JOIN_WAIT:-600}
[[ $wait_s =~ ^[0-9]+$ ]] || die "KUBELAB_JOIN_WAIT=\"$wait_s\": want whole seconds"
deadline=$((SECONDS + wait_s))
next_note=$SECONDS
until [ -s "$HANDOVER/join.sh" ]; do
  ((SECONDS < deadline)) || die "no join command in $HANDOVER/join.sh after ${wait_s}s. The master writes it" \
    "at the end of its provisioning: bring it up first (vagrant up master); with an rsync synced folder" \
    "(the Debian boxes') the file reaches this VM at its next sync: vagrant rsync $node && vagrant provision $node"
  if ((SECONDS >= next_note)); then
    say "waiting for the master's join command in $HANDOVER/join.sh ($((deadline - SECONDS))s left)"
    next_note=$((SECONDS + 30))
  fi
  sleep 1
done

line=$(grep -E '^exec kubelab join ' "$HANDOVER/join.sh" | tail -n 1 || true)
re='^exec kubelab join ([^ ]+) --token ([^ ]+) --discovery-token-ca-cert-hash (sha256:[0-9a-f]+) "\$@"$'
[[ $line =~ $re ]] || die "$HANDOVER/join.sh holds no join command (want: kubelab join HOST:6443 --token T" \
  "--discovery-token-ca-cert-hash sha256:HEX); re-provision the master: vagrant provision master"
server=${BASH_REMATCH[1]} token=${BASH_REMATCH[2]} hash=${BASH_REMATCH[3]}
say "kubelab join $server as $node: node IP $ip on $iface (the private network, not the NAT interface)"
# shellcheck disable=SC2046 # dir_flags prints whole flags, one per line, or nothing
"$KUBELAB" join "$server" --token "$token" --discovery-token-ca-cert-hash "$hash" \
  --node-ip "$ip" --iface "$iface" --node-name "$node" $(dir_flags) ||
  die "kubelab join failed (its error is above). If the token expired (they live 24 h):" \
    "vagrant provision master, then vagrant rsync $node && vagrant provision $node"
