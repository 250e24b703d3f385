"""Authentication: who is calling. The API service asks this module once per request, then
hands the answer to the authorizer (authz.py).

Two credentials name a user, as in Kubernetes:
- a client certificate issued by the cluster CA: CN is the user, O values are the groups;
- a bootstrap token, `authorization: Bearer <id>.<secret>` in the call's metadata: valid while
  the Secret `bootstrap-token-<id>` (type bootstrap.kubernetes.io/token) in kube-system holds
  the same token-secret, says usage-bootstrap-authentication "true" and is not past its
  expiration. The user is system:bootstrap:<id> in system:bootstrappers plus the Secret's
  auth-extra-groups.
A system:masters caller may act as another user (Kubernetes' impersonation, `kubectl --as`):
the Impersonate-User/Impersonate-Group headers over HTTP, the same keys in gRPC metadata.
A caller with neither (it presented the well-known anonymous certificate, see
kubelab.pki.anonymous_client) is system:anonymous; the authorizer lets it read only the
cluster-info ConfigMap. A token that is presented but not valid is refused (Unauthorized)
before any authorization, with a message that tells unknown from expired.
"""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from kubelab import meta, pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import Forbidden, NotFound, Unauthorized

TOKEN_SECRET_TYPE = "bootstrap.kubernetes.io/token"
TOKEN_SECRET_PREFIX = "bootstrap-token-"
BOOTSTRAP_USER_PREFIX = "system:bootstrap:"
BOOTSTRAPPERS = "system:bootstrappers"
AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS.name


ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))


class Authenticator:
    def __init__(self, ca_pem: bytes | None, secrets_store):
        self.ca_pem = ca_pem  # None: a plaintext server (unit tests), every caller is the admin
        self.secrets = secrets_store
        self._certs: dict[bytes, tuple] = {}  # leaf PEM -> (identity or None, recheck after)

    async def authenticate(self, ctx) -> UserInfo:
        return impersonated(ctx, await self._authenticate(ctx))

    async def _authenticate(self, ctx) -> UserInfo:
        if self.ca_pem is None:
            return UserInfo("kubernetes-admin", ("system:masters", AUTHENTICATED))
        user = self._from_cert(ctx)
        if user is not None:
            return user
        token = bearer_token(ctx)
        if token is not None:
            return await self.token_user(token)
        return ANONYMOUS

    def _from_cert(self, ctx) -> UserInfo | None:
        try:
            pem = (ctx.auth_context().get("x509_pem_cert") or [b""])[0]
        except Exception:  # noqa: BLE001 - no TLS context at all
            return None
        if not pem:
            return None
        hit = self._certs.get(pem)
        if hit is None or hit[1] <= time.time():
            user = None
            # TLS let the anonymous certificate through too: only the cluster CA's name a user
            if pki.issued_by(pem, self.ca_pem):
                cn, orgs = pki.cert_identity(pem)
                if cn:
                    user = UserInfo(cn, tuple(orgs) + (AUTHENTICATED,))
            if len(self._certs) > 4096:
                self._certs.clear()
            # looked at again after a minute: a certificate that expired meanwhile stops working
            hit = self._certs[pem] = (user, time.time() + 60)
        return hit[0]

    async def token_user(self, token: str) -> UserInfo:
        tid, secret = parse_token(token)
        try:
            raw = await self.secrets.get("kube-system", TOKEN_SECRET_PREFIX + tid)
        except NotFound:
            raise Unauthorized(f'Unauthorized: bootstrap token "{tid}" is unknown') from None
        s = v1.Secret.FromString(raw)
        d = {k: v.decode(errors="replace") for k, v in s.data.items()}
        if s.type != TOKEN_SECRET_TYPE or not hmac.compare_digest(d.get("token-secret", ""), secret):
            raise Unauthorized(f'Unauthorized: bootstrap token "{tid}" is unknown')
        if d.get("usage-bootstrap-authentication") != "true":
            raise Unauthorized(f'Unauthorized: bootstrap token "{tid}" may not be used for authentication')
        if s.metadata.deletionTimestamp or expired(d.get("expiration", "")):
            raise Unauthorized(f'Unauthorized: bootstrap token "{tid}" has expired ({d.get("expiration")})')
        extra = tuple(g.strip() for g in d.get("auth-extra-groups", "").split(",") if g.strip())
        return UserInfo(BOOTSTRAP_USER_PREFIX + tid, (BOOTSTRAPPERS, *extra, AUTHENTICATED))


def impersonated(ctx, user: UserInfo) -> UserInfo:
    """Kubernetes' impersonation (`kubectl --as U --as-group G`: Impersonate-User/-Group
    headers, or the same metadata keys on gRPC): the request then runs as U in groups G. Only
    system:masters may impersonate (there are no impersonate rules to grant it otherwise)."""
    md = list(ctx.invocation_metadata() or ())
    name = next((str(v) for k, v in md if k == "impersonate-user"), None)
    groups = tuple(str(v) for k, v in md if k == "impersonate-group")
    if name is None:
        if groups:
            raise Forbidden("requested [" + ", ".join(f"{{Group {g}}}" for g in groups) +
                            "] without impersonating a user")
        return user
    if "system:masters" not in user.groups:
        raise Forbidden(f'users "{name}" is forbidden: User "{user.name}" cannot impersonate resource "users" '
                        'in API group "" at the cluster scope')
    if name == ANONYMOUS.name:
        return UserInfo(name, groups or ANONYMOUS.groups)
    return UserInfo(name, groups + ((AUTHENTICATED,) if AUTHENTICATED not in groups else ()))


def bearer_token(ctx) -> str | None:
    for k, v in ctx.invocation_metadata() or ():
        if k == "authorization":
            scheme, _, rest = str(v).partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                raise Unauthorized('Unauthorized: the authorization header must be "Bearer <token>"')
            return rest.strip()
    return None


def parse_token(token: str) -> tuple[str, str]:
    from kubelab.bootstrap.tokens import TOKEN_RE
    m = TOKEN_RE.match(token)
    if not m:
        raise Unauthorized("Unauthorized: the token is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})")
    return m.group(1), m.group(2)


def expired(expiration: str) -> bool:
    if not expiration:
        return False
    t = meta.parse_time(expiration)
    return t is None or t <= meta.now()  # an unreadable expiration counts as expired
