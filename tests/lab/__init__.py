"""End-to-end tests on the local lab: namespace-bundle VMs made into a cluster by init and join."""
