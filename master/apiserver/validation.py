"""Validation of objects before any write, as the API server's registry strategies call it.

Each check appends a FieldError; the registry raises one Invalid error naming the object and
every failing field, worded as Kubernetes words it:
`pods "web" is invalid: spec.containers[0].image: Required value`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kubelab import quantity
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import Invalid

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
             "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
             "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                 "'-' or '.', and must start and end with an alphanumeric character (e.g. "
                 "'example.com', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")

RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass
class FieldError:
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def required(path: str) -> FieldError:
    return FieldError(path, "Required value")


def invalid(path: str, value, why: str) -> FieldError:
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    return FieldError(path, f"Invalid value: {shown}: {why}")


def unsupported(path: str, value: str, allowed: tuple[str, ...]) -> FieldError:
    opts = ", ".join(f'"{a}"' for a in allowed)
    return FieldError(path, f'Unsupported value: "{value}": supported values: {opts}')


def raise_if(errs: list[FieldError], resource: str, name: str) -> None:
    if errs:
        raise Invalid(f'{resource} "{name}" is invalid: ' + ", ".join(str(e) for e in errs))


def check_dns_label(value: str, path: str, errs: list, max_len: int = 63) -> None:
    if not value:
        errs.append(required(path))
    elif len(value) > max_len:
        errs.append(invalid(path, value, f"must be no more than {max_len} characters"))
    elif not DNS1123_LABEL.match(value):
        errs.append(invalid(path, value, LABEL_MSG))


DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
               "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
               "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")


def check_dns1035_label(value: str, path: str, errs: list) -> None:
    """A Service's name: it becomes a DNS name (and an environment variable), so no leading digit."""
    if not value:
        errs.append(required(path))
    elif len(value) > 63:
        errs.append(invalid(path, value, "must be no more than 63 characters"))
    elif not DNS1035_LABEL.match(value):
        errs.append(invalid(path, value, DNS1035_MSG))


def check_dns_subdomain(value: str, path: str, errs: list) -> None:
    if not value:
        errs.append(required(path))
    elif len(value) > 253:
        errs.append(invalid(path, value, "must be no more than 253 characters"))
    elif not DNS1123_SUBDOMAIN.match(value):
        errs.append(invalid(path, value, SUBDOMAIN_MSG))


def check_qualified_name(key: str, path: str, errs: list) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix:
        check_dns_subdomain(prefix, path, errs)
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        errs.append(invalid(path, key, "name part must consist of alphanumeric characters, '-', '_' "
                            "or '.', and must start and end with an alphanumeric character, "
                            "at most 63 characters"))


def check_labels(labels, path: str, errs: list) -> None:
    for k, v in labels.items():
        check_qualified_name(k, path, errs)
        if len(v) > 63 or not LABEL_VALUE.match(v):
            errs.append(invalid(f"{path}", v, "a valid label must be an empty string or consist of "
                                "alphanumeric characters, '-', '_' or '.', and must start and end "
                                "with an alphanumeric character, at most 63 characters"))


def check_meta(meta: v1.ObjectMeta, errs: list, *, name_check=check_dns_subdomain) -> None:
    name_check(meta.name, "metadata.name", errs)
    check_labels(meta.labels, "metadata.labels", errs)
    for k in meta.annotations:
        check_qualified_name(k, "metadata.annotations", errs)
    if sum(len(k) + len(v) for k, v in meta.annotations.items()) > 256 * 1024:
        errs.append(FieldError("metadata.annotations", "Too long: must have at most 262144 bytes"))


def check_quantities(res: v1.ResourceRequirements, path: str, errs: list) -> None:
    for field in ("requests", "limits"):
        for name, q in getattr(res, field).items():
            p = f"{path}.{field}[{name}]"
            try:
                if quantity.parse(q) < 0:
                    errs.append(invalid(p, q, "must be greater than or equal to 0"))
            except quantity.QuantityError as e:
                errs.append(invalid(p, q, str(e)))
    for name, q in res.requests.items():
        lim = res.limits.get(name)
        try:
            if lim is not None and quantity.parse(q) > quantity.parse(lim):
                errs.append(invalid(f"{path}.requests", q, f"must be less than or equal to {name} limit of {lim}"))
        except quantity.QuantityError:
            pass


def check_probe(p: v1.Probe, path: str, errs: list) -> None:
    handlers = [h for h in ("exec", "httpGet", "tcpSocket") if p.HasField(h)]
    if len(handlers) != 1:
        errs.append(required(f"{path}") if not handlers else
                    FieldError(path, "Forbidden: may not specify more than 1 handler type"))
    if p.HasField("exec") and not p.exec.command:
        errs.append(required(f"{path}.exec.command"))
    for h in ("httpGet", "tcpSocket"):
        if p.HasField(h):
            port = getattr(p, h).port
            kind = port.WhichOneof("kind")
            if kind == "number_value":
                if not 0 < port.number_value < 65536 or port.number_value != int(port.number_value):
                    errs.append(invalid(f"{path}.{h}.port", int(port.number_value),
                                        "must be between 1 and 65535, inclusive"))
            elif kind != "string_value" or not port.string_value:
                errs.append(required(f"{path}.{h}.port"))
    for f in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"):
        if getattr(p, f) < 0:
            errs.append(invalid(f"{path}.{f}", getattr(p, f), "must be greater than or equal to 0"))


def check_container(c: v1.Container, path: str, volumes: set[str], errs: list, *, init: bool,
                    allow_privileged: bool = True) -> None:
    check_dns_label(c.name, f"{path}.name", errs)
    # kube-apiserver's --allow-privileged: kubeadm turns it on, as every cluster here needs it
    # for the overlay agent's pod; off, privileged containers are refused at the door.
    if c.securityContext.privileged and not allow_privileged:
        errs.append(FieldError(f"{path}.securityContext.privileged", "Forbidden: disallowed by cluster policy"))
    if not c.image.strip():
        errs.append(required(f"{path}.image"))
    if c.imagePullPolicy and c.imagePullPolicy not in PULL_POLICIES:
        errs.append(unsupported(f"{path}.imagePullPolicy", c.imagePullPolicy, PULL_POLICIES))
    if c.restartPolicy and (not init or c.restartPolicy != "Always"):
        errs.append(unsupported(f"{path}.restartPolicy", c.restartPolicy, ("Always",) if init else ()))
    for i, e in enumerate(c.env):
        if not e.name:
            errs.append(required(f"{path}.env[{i}].name"))
        elif not ENV_NAME.match(e.name):
            errs.append(invalid(f"{path}.env[{i}].name", e.name, "a valid environment variable name "
                                "must consist of alphabetic characters, digits, '_', '-', or '.', "
                                "and must not start with a digit"))
    for i, p in enumerate(c.ports):
        pp = f"{path}.ports[{i}]"
        if not 0 < p.containerPort < 65536:
            errs.append(invalid(f"{pp}.containerPort", p.containerPort, "must be between 1 and 65535, inclusive"))
        if p.hostPort and not 0 < p.hostPort < 65536:
            errs.append(invalid(f"{pp}.hostPort", p.hostPort, "must be between 1 and 65535, inclusive"))
        if p.protocol and p.protocol not in PROTOCOLS:
            errs.append(unsupported(f"{pp}.protocol", p.protocol, PROTOCOLS))
    check_quantities(c.resources, f"{path}.resources", errs)
    for i, m in enumerate(c.volumeMounts):
        if not m.name:
            errs.append(required(f"{path}.volumeMounts[{i}].name"))
        elif m.name not in volumes:
            errs.append(FieldError(f"{path}.volumeMounts[{i}].name", f'Not found: "{m.name}"'))
        if not m.mountPath:
            errs.append(required(f"{path}.volumeMounts[{i}].mountPath"))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if c.HasField(probe):
            check_probe(getattr(c, probe), f"{path}.{probe}", errs)


def check_toleration(t: v1.Toleration, path: str, errs: list) -> None:
    if t.operator not in ("", "Equal", "Exists"):
        errs.append(unsupported(f"{path}.operator", t.operator, ("Equal", "Exists")))
    if t.operator == "Exists" and t.value:
        errs.append(invalid(f"{path}.operator", t.value, "value must be empty when `operator` is 'Exists'"))
    if not t.key and t.operator != "Exists":
        errs.append(invalid(f"{path}.operator", t.operator, "operator must be Exists when `key` is empty"))
    if t.effect and t.effect not in TAINT_EFFECTS:
        errs.append(unsupported(f"{path}.effect", t.effect, TAINT_EFFECTS))
    if t.HasField("tolerationSeconds") and t.effect != "NoExecute":
        errs.append(invalid(f"{path}.effect", t.effect, "effect must be 'NoExecute' when `tolerationSeconds` is set"))


def validate_pod_spec(spec: v1.PodSpec, errs: list, *, allow_privileged: bool = True) -> None:
    volumes: set[str] = set()
    for i, vol in enumerate(spec.volumes):
        p = f"spec.volumes[{i}]"
        check_dns_label(vol.name, f"{p}.name", errs)
        if vol.name in volumes:
            errs.append(FieldError(f"{p}.name", f'Duplicate value: "{vol.name}"'))
        volumes.add(vol.name)
        sources = [s for s in ("emptyDir", "hostPath") if vol.HasField(s)]
        if len(sources) != 1:
            errs.append(required(f"{p}") if not sources else
                        FieldError(p, "Forbidden: may not specify more than 1 volume type"))
        if vol.HasField("hostPath") and not vol.hostPath.path.startswith("/"):
            errs.append(invalid(f"{p}.hostPath.path", vol.hostPath.path, "must be an absolute path"))
    if not spec.containers:
        errs.append(required("spec.containers"))
    names: set[str] = set()
    for field, init in (("initContainers", True), ("containers", False)):
        for i, c in enumerate(getattr(spec, field)):
            check_container(c, f"spec.{field}[{i}]", volumes, errs, init=init, allow_privileged=allow_privileged)
            if c.name and c.name in names:
                errs.append(FieldError(f"spec.{field}[{i}].name", f'Duplicate value: "{c.name}"'))
            names.add(c.name)
    if spec.restartPolicy not in RESTART_POLICIES:
        errs.append(unsupported("spec.restartPolicy", spec.restartPolicy, RESTART_POLICIES))
    if spec.HasField("terminationGracePeriodSeconds") and spec.terminationGracePeriodSeconds < 0:
        errs.append(invalid("spec.terminationGracePeriodSeconds", spec.terminationGracePeriodSeconds,
                            "must be greater than or equal to 0"))
    if spec.nodeName:
        check_dns_subdomain(spec.nodeName, "spec.nodeName", errs)
    check_labels(spec.nodeSelector, "spec.nodeSelector", errs)
    for i, t in enumerate(spec.tolerations):
        check_toleration(t, f"spec.tolerations[{i}]", errs)


def validate_node_spec(spec: v1.NodeSpec, errs: list) -> None:
    for i, t in enumerate(spec.taints):
        if not t.key:
            errs.append(required(f"spec.taints[{i}].key"))
        if t.effect not in TAINT_EFFECTS:
            errs.append(unsupported(f"spec.taints[{i}].effect", t.effect, TAINT_EFFECTS))
    if spec.podCIDR and not re.match(r"^\d+\.\d+\.\d+\.\d+/\d+$", spec.podCIDR):
        errs.append(invalid("spec.podCIDR", spec.podCIDR, "must be a valid CIDR"))


# ---- Secret, ConfigMap, CertificateSigningRequest ----
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
TOKEN_ID = re.compile(r"^[a-z0-9]{6}$")
TOKEN_SECRET = re.compile(r"^[a-z0-9]{16}$")
CSR_CONDITIONS = ("Approved", "Denied", "Failed")
KEY_USAGES = ("signing", "digital signature", "content commitment", "key encipherment", "key agreement",
              "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
              "server auth", "client auth", "code signing", "email protection", "s/mime",
              "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
              "microsoft sgc", "netscape sgc")
MAX_DATA_BYTES = 1024 * 1024


def _check_keys(keys, path: str, errs: list) -> None:
    for k in keys:
        if not CONFIG_KEY.match(k) or len(k) > 253:
            errs.append(invalid(f"{path}[{k}]", k, "a valid config key must consist of alphanumeric "
                                "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
                                "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"))


def validate_secret(s: v1.Secret, errs: list) -> None:
    _check_keys(s.data.keys(), "data", errs)
    if sum(len(v) for v in s.data.values()) > MAX_DATA_BYTES:
        errs.append(FieldError("data", f"Too long: must have at most {MAX_DATA_BYTES} bytes"))
    if s.type != BOOTSTRAP_TOKEN_TYPE:
        return
    # a bootstrap token's Secret must be one the token authenticator can find and check
    tid, tsecret = s.data.get("token-id", b"").decode(errors="replace"), s.data.get("token-secret", b"")
    if not TOKEN_ID.match(tid):
        errs.append(invalid("data[token-id]", tid, "must match [a-z0-9]{6}"))
    elif s.metadata.name != f"bootstrap-token-{tid}":
        errs.append(invalid("metadata.name", s.metadata.name, f'must be "bootstrap-token-{tid}" for token-id {tid}'))
    if not TOKEN_SECRET.match(tsecret.decode(errors="replace")):
        errs.append(FieldError("data[token-secret]", "Invalid value: must match [a-z0-9]{16}"))
    exp = s.data.get("expiration", b"").decode(errors="replace")
    if exp:
        from kubelab import meta
        if meta.parse_time(exp) is None:
            errs.append(invalid("data[expiration]", exp, "must be an RFC3339 time (2006-01-02T15:04:05Z)"))


def validate_configmap(cm: v1.ConfigMap, errs: list) -> None:
    _check_keys(cm.data.keys(), "data", errs)
    _check_keys(cm.binaryData.keys(), "binaryData", errs)
    for k in set(cm.data) & set(cm.binaryData):
        errs.append(invalid(f"data[{k}]", k, "duplicate of key present in binaryData"))
    if sum(len(v) for v in cm.data.values()) + sum(len(v) for v in cm.binaryData.values()) > MAX_DATA_BYTES:
        errs.append(FieldError("data", f"Too long: must have at most {MAX_DATA_BYTES} bytes"))


def validate_immutable(obj, old, fields: tuple[str, ...], errs: list) -> None:
    for f in fields:
        if getattr(obj, f) != getattr(old, f):
            errs.append(FieldError(f, "Invalid value: field is immutable"))
    if old.HasField("immutable") and old.immutable:
        if not (obj.HasField("immutable") and obj.immutable):
            errs.append(FieldError("immutable", "Forbidden: field is immutable when `immutable` is set"))
        if obj.data != old.data:
            errs.append(FieldError("data", "Forbidden: field is immutable when `immutable` is set"))


def validate_csr(csr: v1.CertificateSigningRequest, errs: list) -> None:
    from cryptography import x509
    spec = csr.spec
    if not spec.request:
        errs.append(required("spec.request"))
    else:
        try:
            req = x509.load_pem_x509_csr(spec.request)
            if not req.is_signature_valid:
                errs.append(FieldError("spec.request", "Invalid value: the request's signature is not valid"))
        except ValueError as e:
            errs.append(FieldError("spec.request", f"Invalid value: {e}"))
    if not spec.signerName:
        errs.append(required("spec.signerName"))
    elif "/" not in spec.signerName:
        errs.append(invalid("spec.signerName", spec.signerName, "must be a fully qualified domain and path "
                            "of the form 'example.com/signer-name'"))
    if not spec.usages:
        errs.append(required("spec.usages"))
    for i, u in enumerate(spec.usages):
        if u not in KEY_USAGES:
            errs.append(unsupported(f"spec.usages[{i}]", u, KEY_USAGES))
    if spec.HasField("expirationSeconds") and spec.expirationSeconds < 600:
        errs.append(invalid("spec.expirationSeconds", spec.expirationSeconds, "may not specify a duration "
                            "less than 600 seconds (10 minutes)"))


def validate_csr_status(csr: v1.CertificateSigningRequest, old: v1.CertificateSigningRequest, errs: list) -> None:
    types = [c.type for c in csr.status.conditions]
    for i, t in enumerate(types):
        if t not in CSR_CONDITIONS:
            errs.append(unsupported(f"status.conditions[{i}].type", t, CSR_CONDITIONS))
        if types.count(t) > 1:
            errs.append(FieldError(f"status.conditions[{i}].type", f'Duplicate value: "{t}"'))
    if "Approved" in types and "Denied" in types:
        errs.append(FieldError("status.conditions", 'Invalid value: Approved and Denied conditions '
                               'are mutually exclusive'))
    if old.status.certificate and csr.status.certificate != old.status.certificate:
        errs.append(FieldError("status.certificate", "Forbidden: updates may not modify existing certificate content"))
    if csr.status.certificate and not old.status.certificate and "Approved" not in types:
        errs.append(FieldError("status.certificate", "Forbidden: certificate may only be set on an approved request"))


# ---- Service, Endpoints, EndpointSlice ----
SERVICE_TYPES = ("ClusterIP", "NodePort")
SERVICE_PROTOCOLS = ("TCP", "UDP")
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")
ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
MAX_AFFINITY_TIMEOUT = 86400
IP_MSG = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"


def is_ip(value: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def port_name_errors(name: str) -> list[str]:
    """IANA_SVC_NAME, as Kubernetes' IsValidPortName words it: what a named targetPort (and a
    container port's name) must be."""
    out = []
    if len(name) > 15:
        out.append("must be no more than 15 characters")
    if not re.match(r"^[-a-z0-9]+$", name):
        out.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in name:
        out.append("must not contain consecutive hyphens")
    if not re.search(r"[a-z]", name):
        out.append("must contain at least one letter (a-z)")
    if name.startswith("-") or name.endswith("-"):
        out.append("must not begin or end with a hyphen")
    return out


def check_int_or_name(v, path: str, errs: list) -> None:
    """A port given by number (1-65535) or by IANA_SVC_NAME (google.protobuf.Value)."""
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        n = v.number_value
        if not 0 < n < 65536 or n != int(n):
            errs.append(invalid(path, int(n) if n == int(n) else n, PORT_RANGE_MSG))
    elif kind == "string_value" and v.string_value:
        for why in port_name_errors(v.string_value):
            errs.append(invalid(path, v.string_value, why))
    else:
        errs.append(required(path))


def validate_service(svc: v1.Service, errs: list) -> None:
    s = svc.spec
    if s.type not in SERVICE_TYPES:
        errs.append(unsupported("spec.type", s.type, SERVICE_TYPES))
    headless = s.clusterIP == "None"
    if s.clusterIP and not headless and not is_ip(s.clusterIP):
        errs.append(invalid("spec.clusterIPs[0]", s.clusterIP, IP_MSG))
    if len(s.clusterIPs) > 1:
        errs.append(FieldError("spec.clusterIPs", f"Too many: {len(s.clusterIPs)}: must have at most 1 items "
                               "(only IPv4 single-stack is supported)"))
    if s.clusterIPs and s.clusterIPs[0] != s.clusterIP:
        errs.append(invalid("spec.clusterIPs[0]", s.clusterIPs[0], "must match `clusterIP` when both are specified"))
    if headless and s.type == "NodePort":
        errs.append(invalid("spec.clusterIPs[0]", "None", "may not be set to 'None' for NodePort services"))
    for f in ("ipFamilies",):
        for i, fam in enumerate(getattr(s, f)):
            if fam != "IPv4":
                errs.append(unsupported(f"spec.{f}[{i}]", fam, ("IPv4",)))
    if s.HasField("ipFamilyPolicy") and s.ipFamilyPolicy != "SingleStack":
        errs.append(unsupported("spec.ipFamilyPolicy", s.ipFamilyPolicy, ("SingleStack",)))
    if not s.ports and not headless:
        errs.append(required("spec.ports"))
    names: set[str] = set()
    seen: set[tuple[int, str]] = set()
    node_ports: set[tuple[int, str]] = set()
    for i, p in enumerate(s.ports):
        path = f"spec.ports[{i}]"
        if not p.name:
            if len(s.ports) > 1:
                errs.append(required(f"{path}.name"))
        else:
            check_dns_label(p.name, f"{path}.name", errs)
            if p.name in names:
                errs.append(FieldError(f"{path}.name", f'Duplicate value: "{p.name}"'))
            names.add(p.name)
        if not 0 < p.port < 65536:
            errs.append(invalid(f"{path}.port", p.port, PORT_RANGE_MSG))
        if p.protocol not in SERVICE_PROTOCOLS:
            errs.append(unsupported(f"{path}.protocol", p.protocol, SERVICE_PROTOCOLS))
        elif (p.port, p.protocol) in seen:
            errs.append(FieldError(path, f'Duplicate value: "{p.port}/{p.protocol}"'))
        seen.add((p.port, p.protocol))
        check_int_or_name(p.targetPort, f"{path}.targetPort", errs)
        if p.nodePort:
            if s.type != "NodePort":
                errs.append(FieldError(f"{path}.nodePort", f"Forbidden: may not be used when `type` is '{s.type}'"))
            elif not 0 < p.nodePort < 65536:
                errs.append(invalid(f"{path}.nodePort", p.nodePort, PORT_RANGE_MSG))
            elif (p.nodePort, p.protocol) in node_ports:
                errs.append(FieldError(f"{path}.nodePort", f"Duplicate value: {p.nodePort}"))
            node_ports.add((p.nodePort, p.protocol))
    check_labels(s.selector, "spec.selector", errs)
    if s.sessionAffinity not in SESSION_AFFINITIES:
        errs.append(unsupported("spec.sessionAffinity", s.sessionAffinity, SESSION_AFFINITIES))
    if s.HasField("sessionAffinityConfig"):
        if s.sessionAffinity != "ClientIP":
            errs.append(FieldError("spec.sessionAffinityConfig", "Invalid value: must not be set when "
                                   "session affinity is None"))
        t = s.sessionAffinityConfig.clientIP.timeoutSeconds
        if not 0 < t <= MAX_AFFINITY_TIMEOUT:
            errs.append(invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", t,
                                f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}"))
    if s.externalTrafficPolicy:
        if s.type != "NodePort":
            errs.append(invalid("spec.externalTrafficPolicy", s.externalTrafficPolicy,
                                "may only be set when `type` is 'NodePort' or 'LoadBalancer'"))
        elif s.externalTrafficPolicy not in TRAFFIC_POLICIES:
            errs.append(unsupported("spec.externalTrafficPolicy", s.externalTrafficPolicy, TRAFFIC_POLICIES))
    if s.internalTrafficPolicy and s.internalTrafficPolicy not in TRAFFIC_POLICIES:
        errs.append(unsupported("spec.internalTrafficPolicy", s.internalTrafficPolicy, TRAFFIC_POLICIES))
    for i, ip in enumerate(s.externalIPs):
        if not is_ip(ip):
            errs.append(invalid(f"spec.externalIPs[{i}]", ip, IP_MSG))


def validate_service_update(svc: v1.Service, old: v1.Service, errs: list) -> None:
    if old.spec.clusterIP and svc.spec.clusterIP != old.spec.clusterIP:
        errs.append(invalid("spec.clusterIP", svc.spec.clusterIP, "field is immutable"))


def _check_endpoint_port(p, path: str, many: bool, names: set, errs: list) -> None:
    if p.name:
        check_dns_label(p.name, f"{path}.name", errs)
        if p.name in names:
            errs.append(FieldError(f"{path}.name", f'Duplicate value: "{p.name}"'))
        names.add(p.name)
    elif many:
        errs.append(required(f"{path}.name"))
    if not 0 < p.port < 65536:
        errs.append(invalid(f"{path}.port", p.port, PORT_RANGE_MSG))
    if p.protocol not in PROTOCOLS:
        errs.append(unsupported(f"{path}.protocol", p.protocol, PROTOCOLS))


def validate_endpoints(ep: v1.Endpoints, errs: list) -> None:
    for i, sub in enumerate(ep.subsets):
        path = f"subsets[{i}]"
        if not sub.addresses and not sub.notReadyAddresses:
            errs.append(required(f"{path}"))
        for field in ("addresses", "notReadyAddresses"):
            for j, a in enumerate(getattr(sub, field)):
                if not is_ip(a.ip):
                    errs.append(invalid(f"{path}.{field}[{j}].ip", a.ip, IP_MSG))
                if a.hostname:
                    check_dns_label(a.hostname, f"{path}.{field}[{j}].hostname", errs)
        names: set[str] = set()
        for j, p in enumerate(sub.ports):
            _check_endpoint_port(p, f"{path}.ports[{j}]", len(sub.ports) > 1, names, errs)


def validate_endpoint_slice(es: v1.EndpointSlice, errs: list, old: v1.EndpointSlice | None = None) -> None:
    import ipaddress
    if es.addressType not in ADDRESS_TYPES:
        errs.append(unsupported("addressType", es.addressType, ADDRESS_TYPES))
    if old is not None and es.addressType != old.addressType:
        errs.append(invalid("addressType", es.addressType, "field is immutable"))
    if len(es.endpoints) > 1000:
        errs.append(FieldError("endpoints", f"Too many: {len(es.endpoints)}: must have at most 1000 items"))
    if len(es.ports) > 100:
        errs.append(FieldError("ports", f"Too many: {len(es.ports)}: must have at most 100 items"))
    version = {"IPv4": 4, "IPv6": 6}.get(es.addressType)
    for i, e in enumerate(es.endpoints):
        path = f"endpoints[{i}]"
        if not e.addresses:
            errs.append(required(f"{path}.addresses"))
        elif len(e.addresses) > 100:
            errs.append(FieldError(f"{path}.addresses", f"Too many: {len(e.addresses)}: must have at most 100 items"))
        for j, a in enumerate(e.addresses):
            if version is None:
                check_dns_subdomain(a, f"{path}.addresses[{j}]", errs)
                continue
            try:
                ok = ipaddress.ip_address(a).version == version
            except ValueError:
                ok = False
            if not ok:
                errs.append(invalid(f"{path}.addresses[{j}]", a, f"must be a valid {es.addressType} address"))
        if e.HasField("hostname"):
            check_dns_label(e.hostname, f"{path}.hostname", errs)
        if e.HasField("nodeName"):
            check_dns_subdomain(e.nodeName, f"{path}.nodeName", errs)
    names: set[str] = set()
    for i, p in enumerate(es.ports):
        path = f"ports[{i}]"
        if p.name:
            check_dns_label(p.name, f"{path}.name", errs)
            if p.name in names:
                errs.append(FieldError(f"{path}.name", f'Duplicate value: "{p.name}"'))
            names.add(p.name)
        if p.HasField("port") and not 0 < p.port < 65536:
            errs.append(invalid(f"{path}.port", p.port, PORT_RANGE_MSG))
        if p.HasField("protocol") and p.protocol not in PROTOCOLS:
            errs.append(unsupported(f"{path}.protocol", p.protocol, PROTOCOLS))


def validate_pod_dns(spec: v1.PodSpec, errs: list) -> None:
    if spec.dnsPolicy not in DNS_POLICIES:
        errs.append(unsupported("spec.dnsPolicy", spec.dnsPolicy, DNS_POLICIES))
    c = spec.dnsConfig
    if spec.dnsPolicy == "None" and not c.nameservers:
        errs.append(FieldError("spec.dnsConfig.nameservers", "Required value: must provide at least one DNS "
                               "nameserver when `dnsPolicy` is None"))
    if len(c.nameservers) > 3:
        errs.append(invalid("spec.dnsConfig.nameservers", ",".join(c.nameservers),
                            "must not have more than 3 nameservers"))
    for i, ns in enumerate(c.nameservers):
        if not is_ip(ns):
            errs.append(invalid(f"spec.dnsConfig.nameservers[{i}]", ns, IP_MSG))
    if len(c.searches) > 32:
        errs.append(invalid("spec.dnsConfig.searches", " ".join(c.searches), "must not have more than 32 search paths"))
    for i, s in enumerate(c.searches):
        if s != ".":
            check_dns_subdomain(s.rstrip("."), f"spec.dnsConfig.searches[{i}]", errs)
    for i, o in enumerate(c.options):
        if not o.name:
            errs.append(required(f"spec.dnsConfig.options[{i}].name"))
    if spec.subdomain:
        check_dns_label(spec.subdomain, "spec.subdomain", errs)
    if spec.hostname:
        check_dns_label(spec.hostname, "spec.hostname", errs)
