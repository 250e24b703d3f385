"""The node's container runtime: OCI image store (images.py, busybox.py), runc containers in
pod sandboxes (runtime.py, bundle.py, sandbox.py, runc.py, conmon.py, cgroups.py, mounts.py)
and their logs (logs.py). The kubelet uses it through Runtime and ImageStore.

Names are imported lazily, so that `kubelab` commands that need one piece (images, logs) do
not load the rest."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ContainerCreateError": "runtime", "ContainerError": "runtime", "ContainerNotFound": "runtime",
    "ContainerSpec": "runtime", "ContainerStatus": "runtime", "Runtime": "runtime",
    "ImageConfig": "images", "ImageError": "images", "ImageImportError": "images", "ImageInfo": "images",
    "ImageNotFound": "images", "ImagePullError": "images", "ImageStore": "images",
    "LogEntry": "logs", "read_log": "logs", "read_log_entries": "logs",
    "InvalidReference": "refs", "normalize": "refs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
