"""Networking on a worker node.

The kubelet's pod network setup, what a CNI bridge plugin with host-local IPAM does in
Kubernetes: a network namespace per pod sandbox, a veth into the node bridge `cni0`, an
address from the node's podCIDR, masquerade for traffic leaving the cluster.

    ipam.py      addresses of the node's podCIDR, one file per address
    netns.py     named network namespaces (the sandbox's network)
    bridge.py    the node bridge and its gateway address
    iptables.py  our KUBELAB-* chains: masquerade and forward accept
    podnet.py    PodNetwork: the API the kubelet calls
    cmd.py       the injected command runner (ip, iptables, sysctl, nsenter)
"""
from worker.network.cmd import CommandRunner, Completed, Runner
from worker.network.errors import AddressExhausted, NetworkError
from worker.network.ipam import IPAM
from worker.network.podnet import PodNetwork, PodNetworkStatus

__all__ = ["IPAM", "AddressExhausted", "CommandRunner", "Completed", "NetworkError", "PodNetwork",
           "PodNetworkStatus", "Runner"]
