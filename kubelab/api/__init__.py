"""The API's types, shared by every component: generated messages (kubelab.api.v1) and
the table of kinds (kubelab.api.kinds) that maps a resource name to its message."""
