"""Bootstrap: what a new node needs to join a cluster without a certificate yet (kubeadm's
bootstrap tokens, cluster-info discovery, and TLS bootstrap through a signing request)."""
