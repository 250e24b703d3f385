"""The local lab: "VMs" that are bundles of Linux namespaces on one machine.

Where it sits: kubeadm's and kind's role for people without a hypervisor. `kubelab lab` builds
the machines (vms.py, net.py, supervisor.py); cluster.py then runs `kubelab init` / `kubelab
join` inside them through the CLI, as a person would on a real VM, and reads the result
through the API, so this package never imports master/, worker/ or kubeadm/ (the supervisor
runs kubeadm's node service Runner, the one exception: it is the VM's systemd). docs/lab.md
tells the whole story: up's steps, the host's routes, load, partition, down.

A lab VM is:
- a network namespace `/run/netns/<vm>` with `lo` and `eth0`, the peer of a veth whose host
  end is a port of the lab bridge; the VM's address is on the lab subnet (192.168.56.0/24 by
  default, master .10, workerN .10+N, the bridge .1). No default route in the VM and no NAT on
  the host: the VMs reach each other and the host's bridge address, nothing else. Two FORWARD
  rules on the host accept bridge-to-bridge traffic and drop anything bridged in from the lab
  towards another interface, so a route added later inside a VM still cannot leak out.
- a UTS namespace with its own hostname (the VM's name, e.g. kubelab-worker1), and
- a mount namespace (all mounts private) in which the VM's own directories under the lab dir
  are bind-mounted over /etc/kubelab, /var/lib/kubelab and /run. /run is private so that the
  netns names, runc state and sockets made inside the VM stay invisible outside; the copies
  of the host's /run/netns/* mounts are detached first so the VM does not pin other
  namespaces (the host's `ip netns del` of them would fail with "Device or resource busy").

Keeping a VM alive without the CLI: every VM has a supervisor process (`supervisor.py`),
started through `unshare --mount --uts --net=/run/netns/<vm>` in its own session. It sets the
hostname and the mounts, reports ready, then waits; it is what holds the mount and UTS
namespaces (the network namespace is also held by its /run/netns file). The supervisor is the
place where the next layer keeps the node daemons (kubelet, runtime) running, as systemd does
on a real VM. `lab shell` enters the supervisor's namespaces with nsenter. A mount namespace
pinned by a bind-mounted /proc/PID/ns/mnt file was the alternative; it was not chosen because
it needs a private mount of the lab dir on the host (one more mount to leak) and gives no
place to supervise daemons.

State lives in the lab dir (default /var/lib/kubelab-lab, `--lab-dir` or $KUBELAB_LAB_DIR):
`lab.json` plus one directory per VM holding its private trees and supervisor log, so status,
shell, partition and down work from any process. `lab down` kills every process in a VM's
namespaces (and their descendants) before deleting the network namespaces: while any process
of a mount namespace that holds a copy of a netns mount lives, `ip netns del` is refused.
"""
