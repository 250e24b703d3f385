"""Static pods: the pods in the kubelet's manifest directory (kubeadm's
/etc/kubernetes/manifests). The kubelet runs them without the API server, and makes a
read-only "mirror pod" `<name>-<node>` for each in the API so they show in `get pods`.
A file added, changed or removed is noticed at the next scan; deleting the mirror pod does not
stop the static pod (the kubelet makes the mirror again)."""
from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path

import yaml

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.cli.common import CLIError
from kubelab.cli.manifest import parse_doc

log = logging.getLogger("kubelet.static")
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
SOURCE_ANNOTATION = "kubernetes.io/config.source"
HASH_ANNOTATION = "kubernetes.io/config.hash"


def is_mirror(pod: v1.Pod) -> bool:
    return MIRROR_ANNOTATION in pod.metadata.annotations


class StaticPods:
    def __init__(self, manifest_dir: Path, node_name: str):
        self.dir, self.node_name = Path(manifest_dir), node_name
        self.errors: dict[str, str] = {}  # file -> the last parse error reported

    def scan(self) -> dict[str, v1.Pod]:
        """uid -> static pod for every valid manifest; a bad file is reported once, and skipped."""
        pods: dict[str, v1.Pod] = {}
        if not self.dir.is_dir():
            return pods
        for f in sorted(self.dir.iterdir()):
            if f.name.startswith(".") or f.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                text = f.read_text()
                doc = yaml.safe_load(text)
                pod = parse_doc(doc, str(f), 1)
                if not isinstance(pod, v1.Pod):
                    raise CLIError(f"{f}: a static pod manifest must be a Pod")
                if not pod.metadata.name:
                    raise CLIError(f"{f}: metadata.name: Required value")
            except (OSError, UnicodeDecodeError, yaml.YAMLError, CLIError) as e:
                if self.errors.get(str(f)) != str(e):
                    log.error("static pod manifest %s: %s", f, e)
                    self.errors[str(f)] = str(e)
                continue
            self.errors.pop(str(f), None)
            digest = hashlib.sha256(f"{self.node_name}\0{f.name}\0{text}".encode()).hexdigest()
            m = pod.metadata
            m.name = f"{m.name}-{self.node_name}"
            m.namespace = m.namespace or "default"
            m.uid = str(uuid.UUID(digest[:32]))
            m.annotations[HASH_ANNOTATION] = digest[:32]
            m.annotations[SOURCE_ANNOTATION] = "file"
            pod.spec.nodeName = self.node_name
            pod.spec.restartPolicy = pod.spec.restartPolicy or "Always"
            if not pod.spec.HasField("terminationGracePeriodSeconds"):
                pod.spec.terminationGracePeriodSeconds = 30
            for c in list(pod.spec.containers) + list(pod.spec.initContainers):
                c.imagePullPolicy = c.imagePullPolicy or "IfNotPresent"
            pods[m.uid] = pod
        return pods


def mirror_of(pod: v1.Pod) -> v1.Pod:
    mirror = v1.Pod()
    mirror.CopyFrom(pod)
    mirror.metadata.uid = ""
    mirror.metadata.resourceVersion = ""
    mirror.metadata.annotations[MIRROR_ANNOTATION] = pod.metadata.annotations[HASH_ANNOTATION]
    mirror.status.Clear()
    return mirror
