"""kubeadm's role: turning a machine into a node of a cluster. `kubelab init` makes a master
(certificates, configs, the control plane as static pods, the node daemons), `kubelab join`
makes a worker through TLS bootstrap, `kubelab reset` takes either back. The shared pieces
they use (bootstrap tokens, discovery, the CSR flow) live in kubelab/bootstrap/; the daemons
they start live in master/ and worker/, and are reached only through their command lines and
the API, as kubeadm reaches kubelet and kube-apiserver."""
