"""ApiError -> metav1.Status, the body of every failed HTTP request and of a watch's ERROR event.

The gRPC face's messages are kept, with the few rewrites that make them Kubernetes' HTTP
wording exactly (kubectl prints `Error from server (<reason>): <message>` from this body):
`Pod "x" is invalid: ...` names the Kind where the registry names the resource, several field
errors are bracketed, and a Forbidden message always says `in API group "..."`. Invalid
errors carry one cause per field, as Kubernetes' StatusCause (reason FieldValueRequired, ...).
"""
from __future__ import annotations

import re

from kubelab.api import kinds
from kubelab.errors import ApiError

HTTP_CODES = {
    "NotFound": 404, "AlreadyExists": 409, "Conflict": 409, "Invalid": 422, "BadRequest": 400,
    "Expired": 410, "Gone": 410, "Forbidden": 403, "Unauthorized": 401, "RequestEntityTooLarge": 413,
    "ServiceUnavailable": 503, "Timeout": 504, "InternalError": 500, "MethodNotAllowed": 405,
    "UnsupportedMediaType": 415, "NotAcceptable": 406, "TooManyRequests": 429,
}

# the field error details validation.py writes, and Kubernetes' cause reason for each
_CAUSES = {"Required value": "FieldValueRequired", "Invalid value": "FieldValueInvalid",
           "Unsupported value": "FieldValueNotSupported", "Duplicate value": "FieldValueDuplicate",
           "Forbidden": "FieldValueForbidden", "Too long": "FieldValueTooLong",
           "Too many": "FieldValueTooMany", "Not found": "FieldValueNotFound"}
_FIELD_ERR = re.compile(r"(?:^|, )([A-Za-z][\w.\-\[\]/ ]*?): (" + "|".join(_CAUSES) + r")\b")
_INVALID = re.compile(r'^([a-z0-9.]+) "([^"]*)" is invalid: (.*)$', re.DOTALL)
_NAMED = re.compile(r'^(?:Operation cannot be fulfilled on )?[a-z0-9.]+ "([^"]+)"')
_FORBIDDEN = re.compile(r'(cannot \S+ resource "[^"]+")( in API group "[^"]*")?')


class HTTPError(ApiError):
    """An error of the HTTP layer itself (wrong method, media type...), with its own reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def http_code(e: ApiError) -> int:
    return HTTP_CODES.get(e.reason, 500)


def _causes(fields: str) -> list[dict]:
    """Split `a: Required value, b[0]: Invalid value: "x": why` into StatusCauses."""
    starts = list(_FIELD_ERR.finditer(fields))
    out = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(fields)
        text = fields[m.start(): end].lstrip(", ")
        out.append({"reason": _CAUSES[m.group(2)], "message": text[len(m.group(1)) + 2:],
                    "field": m.group(1)})
    return out


def status(e: ApiError, *, name: str = "", resource: str = "", group: str = "") -> dict:
    """The metav1.Status of an error; name/resource/group fill details when known."""
    message, details = e.message, {}
    if not name and e.reason in ("AlreadyExists", "NotFound", "Conflict"):
        m = _NAMED.search(message)  # a POST names the object in its body, not its URL
        name = m.group(1) if m else ""
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if resource:
        details["kind"] = resource
    if e.reason == "Invalid":
        m = _INVALID.match(message)
        if not m:
            # not about one object's fields (a JSON patch operation that does not apply):
            # Kubernetes' generic 422 has no kind or name, so kubectl prints the message
            details = {}
        if m:
            res, obj, fields = m.groups()
            kind = kinds.BY_RESOURCE.get(res)
            causes = _causes(fields)
            if causes:
                details["causes"] = causes
            shown = fields if len(causes) <= 1 else "[" + fields + "]"
            message = f'{kind.kind if kind else res} "{obj}" is invalid: {shown}'
            details.setdefault("name", obj)
            if kind is not None:
                details["kind"] = kind.kind
                g = kind.api_version.rpartition("/")[0]
                if g:
                    details["group"] = g
    elif e.reason == "Forbidden":
        message = _FORBIDDEN.sub(lambda m: m.group(1) + (m.group(2) or ' in API group ""'), message, count=1)
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": e.reason}
    if details:
        body["details"] = details
    body["code"] = http_code(e)
    return body
