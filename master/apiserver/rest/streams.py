"""pods/log, pods/exec and pods/attach (WebSocket), pods/binding, pods/eviction over HTTP.

Interface (called by app.py): add_routes(app: aiohttp.web.Application, api) -> None.
"""
from __future__ import annotations


def add_routes(app, api) -> None:
    """Register the pod subresources that are not plain CRUD. Filled in by the streams work."""
