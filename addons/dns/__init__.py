"""Cluster DNS, the role CoreDNS's `kubernetes` plugin plays in a kubeadm cluster.

It runs as the static pod kube-dns on the master behind the Service kube-system/kube-dns (the
tenth address of the service CIDR, which the kubelet writes into every ClusterFirst pod's
/etc/resolv.conf) and answers from what informers on Services and EndpointSlices tell it.

- records.py: the zone, pure and in memory: which names exist and what they answer.
- server.py: DNS over UDP and TCP (dnspython for the wire format), fed by the informers.
- cmd.py: `kubelab dns --config F [--listen 0.0.0.0:53] [--cluster-domain cluster.local]`.
"""
