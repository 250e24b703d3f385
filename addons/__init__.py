"""Cluster addons: programs that run as pods on the cluster and read the API like any other
client (CoreDNS's place in Kubernetes). They import only the shared library, never master/
or worker/."""
