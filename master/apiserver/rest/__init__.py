"""The HTTP face of the API server: Kubernetes' REST API (JSON, watch streams, Tables,
OpenAPI, pods/log and exec), for the real kubectl and the official clients.

It is a translator, not a second API server: every request becomes the same call on the
gRPC face's ApiService (master/apiserver/service.py) — the same admission (authentication,
authorization), stores, validation and watch cache — and its answer is re-encoded as
Kubernetes JSON. Modules:
- app.py: the aiohttp application, TLS with the cluster PKI, routing, errors as Status;
- codec.py / errors.py: JSON <-> messages, ApiError <-> metav1.Status;
- discovery.py: /api, /apis, /version, health endpoints;
- handlers.py / watch.py: CRUD, status subresource, PATCH, watch streams;
- table.py: Table answers (kubelab.api.printers' columns);
- openapi.py: /openapi/v2 and /openapi/v3;
- streams.py: pods/log, pods/exec, pods/attach (WebSocket), pods/binding, pods/eviction;
- protobuf.py: Kubernetes' protobuf envelope for request bodies kubectl sends that way.
"""
