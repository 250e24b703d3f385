"""API errors as Kubernetes names them, and their mapping to gRPC status codes.

The API server raises these; its servicer turns them into a gRPC status whose trailing
metadata carries the reason. The client library turns that back into the same class, so
the CLI, controllers and kubelet all catch `NotFound`, `Conflict`, ... by name and the CLI
prints `Error from server (NotFound): pods "x" not found` as kubectl does.
"""
from __future__ import annotations

import grpc


class ApiError(Exception):
    reason = "InternalError"
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def kubectl(self) -> str:
        return f"Error from server ({self.reason}): {self.message}"


class NotFound(ApiError):
    reason, code = "NotFound", grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    reason, code = "AlreadyExists", grpc.StatusCode.ALREADY_EXISTS


class Conflict(ApiError):
    reason, code = "Conflict", grpc.StatusCode.ABORTED


class Invalid(ApiError):
    reason, code = "Invalid", grpc.StatusCode.INVALID_ARGUMENT


class BadRequest(ApiError):
    reason, code = "BadRequest", grpc.StatusCode.INVALID_ARGUMENT


class Gone(ApiError):
    """The requested resourceVersion is compacted or older than the watch cache: relist."""
    reason, code = "Expired", grpc.StatusCode.OUT_OF_RANGE


class Forbidden(ApiError):
    reason, code = "Forbidden", grpc.StatusCode.PERMISSION_DENIED


class Unauthorized(ApiError):
    reason, code = "Unauthorized", grpc.StatusCode.UNAUTHENTICATED


class RequestEntityTooLarge(ApiError):
    reason, code = "RequestEntityTooLarge", grpc.StatusCode.RESOURCE_EXHAUSTED


class UnsupportedMediaType(ApiError):
    """A body (a PATCH's Content-Type, a protobuf envelope) the server cannot read: HTTP 415."""
    reason, code = "UnsupportedMediaType", grpc.StatusCode.INVALID_ARGUMENT


class ServiceUnavailable(ApiError):
    reason, code = "ServiceUnavailable", grpc.StatusCode.UNAVAILABLE


class Timeout(ApiError):
    reason, code = "Timeout", grpc.StatusCode.DEADLINE_EXCEEDED


_BY_REASON = {c.reason: c for c in (NotFound, AlreadyExists, Conflict, Invalid, BadRequest, Gone,
                                     Forbidden, Unauthorized, RequestEntityTooLarge,
                                     UnsupportedMediaType, ServiceUnavailable, Timeout, ApiError)}
_BY_CODE = {grpc.StatusCode.NOT_FOUND: NotFound, grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
            grpc.StatusCode.ABORTED: Conflict, grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
            grpc.StatusCode.OUT_OF_RANGE: Gone, grpc.StatusCode.PERMISSION_DENIED: Forbidden,
            grpc.StatusCode.UNAUTHENTICATED: Unauthorized,
            grpc.StatusCode.RESOURCE_EXHAUSTED: RequestEntityTooLarge,
            grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
            grpc.StatusCode.DEADLINE_EXCEEDED: Timeout}


def from_rpc_error(err: grpc.RpcError) -> ApiError:
    """Rebuild the server's ApiError from a failed call (reason from trailing metadata)."""
    reason = None
    try:
        for k, v in err.trailing_metadata() or ():
            if k == "reason":
                reason = v
    except Exception:  # noqa: BLE001 - some channel errors carry no metadata
        pass
    cls = _BY_REASON.get(reason) or _BY_CODE.get(err.code(), ApiError)
    details = err.details() or str(err.code())
    if cls is ServiceUnavailable and reason is None:
        details = f"the server is unavailable: {details}"
    return cls(details)


def not_found(resource: str, name: str) -> NotFound:
    return NotFound(f'{resource} "{name}" not found')


def already_exists(resource: str, name: str) -> AlreadyExists:
    return AlreadyExists(f'{resource} "{name}" already exists')


def conflict(resource: str, name: str) -> Conflict:
    return Conflict(f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                    'modified; please apply your changes to the latest version and try again')
