"""/openapi/v2 and /openapi/v3: the kinds' schemas, built from the protobuf descriptors.

Interface (called by app.py): add_routes(app: aiohttp.web.Application, api) -> None.
"""
from __future__ import annotations


def add_routes(app, api) -> None:
    """Register /openapi/v2 and /openapi/v3[/...]. Filled in by the OpenAPI work."""
