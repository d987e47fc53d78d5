"""Kind <-> resource mapping, offline.

Admission requests name resources (`apps/v1 deployments`), manifests name kinds (`Deployment`), and
matchConstraints speak in resources. A cluster answers the mapping through discovery; offline we carry the
table for built-in Kubernetes kinds here and extend it from CustomResourceDefinitions the user supplies
(`--crd`). Unknown kinds fall back to Kubernetes' own guess (lower-case plural), which is right for almost
every CRD.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str
    version: str
    kind: str
    resource: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


# (apiVersion, Kind, plural resource, namespaced) for the built-in API of current Kubernetes releases.
_BUILT_IN: tuple[tuple[str, str, str, bool], ...] = (
    ("v1", "Binding", "bindings", True),
    ("v1", "ComponentStatus", "componentstatuses", False),
    ("v1", "ConfigMap", "configmaps", True),
    ("v1", "Endpoints", "endpoints", True),
    ("v1", "Event", "events", True),
    ("v1", "LimitRange", "limitranges", True),
    ("v1", "Namespace", "namespaces", False),
    ("v1", "Node", "nodes", False),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims", True),
    ("v1", "PersistentVolume", "persistentvolumes", False),
    ("v1", "Pod", "pods", True),
    ("v1", "PodTemplate", "podtemplates", True),
    ("v1", "ReplicationController", "replicationcontrollers", True),
    ("v1", "ResourceQuota", "resourcequotas", True),
    ("v1", "Secret", "secrets", True),
    ("v1", "ServiceAccount", "serviceaccounts", True),
    ("v1", "Service", "services", True),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        False,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        False,
    ),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", False),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        False,
    ),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    ("apiregistration.k8s.io/v1", "APIService", "apiservices", False),
    ("apps/v1", "ControllerRevision", "controllerrevisions", True),
    ("apps/v1", "DaemonSet", "daemonsets", True),
    ("apps/v1", "Deployment", "deployments", True),
    ("apps/v1", "ReplicaSet", "replicasets", True),
    ("apps/v1", "StatefulSet", "statefulsets", True),
    ("authentication.k8s.io/v1", "TokenReview", "tokenreviews", False),
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", True),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", False),
    ("authorization.k8s.io/v1", "SubjectAccessReview", "subjectaccessreviews", False),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True),
    ("autoscaling/v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True),
    ("batch/v1", "CronJob", "cronjobs", True),
    ("batch/v1", "Job", "jobs", True),
    ("certificates.k8s.io/v1", "CertificateSigningRequest", "certificatesigningrequests", False),
    ("coordination.k8s.io/v1", "Lease", "leases", True),
    ("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", True),
    ("events.k8s.io/v1", "Event", "events", True),
    ("flowcontrol.apiserver.k8s.io/v1", "FlowSchema", "flowschemas", False),
    ("flowcontrol.apiserver.k8s.io/v1", "PriorityLevelConfiguration", "prioritylevelconfigurations", False),
    ("networking.k8s.io/v1", "IngressClass", "ingressclasses", False),
    ("networking.k8s.io/v1", "Ingress", "ingresses", True),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True),
    ("node.k8s.io/v1", "RuntimeClass", "runtimeclasses", False),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "Role", "roles", True),
    ("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", False),
    ("storage.k8s.io/v1", "CSIDriver", "csidrivers", False),
    ("storage.k8s.io/v1", "CSINode", "csinodes", False),
    ("storage.k8s.io/v1", "CSIStorageCapacity", "csistoragecapacities", True),
    ("storage.k8s.io/v1", "StorageClass", "storageclasses", False),
    ("storage.k8s.io/v1", "VolumeAttachment", "volumeattachments", False),
    # Older API versions still found in manifests (and checked by deprecation policies).
    ("extensions/v1beta1", "Ingress", "ingresses", True),
    ("extensions/v1beta1", "Deployment", "deployments", True),
    ("extensions/v1beta1", "DaemonSet", "daemonsets", True),
    ("extensions/v1beta1", "ReplicaSet", "replicasets", True),
    ("extensions/v1beta1", "PodSecurityPolicy", "podsecuritypolicies", False),
    ("policy/v1beta1", "PodSecurityPolicy", "podsecuritypolicies", False),
    ("policy/v1beta1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    ("batch/v1beta1", "CronJob", "cronjobs", True),
    ("autoscaling/v2beta1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True),
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True),
    ("networking.k8s.io/v1beta1", "Ingress", "ingresses", True),
    ("flowcontrol.apiserver.k8s.io/v1beta3", "FlowSchema", "flowschemas", False),
    ("policies.kyverno.io/v1", "ValidatingPolicy", "validatingpolicies", False),
    ("policies.kyverno.io/v1", "MutatingPolicy", "mutatingpolicies", False),
    ("policies.kyverno.io/v1", "GeneratingPolicy", "generatingpolicies", False),
    ("policies.kyverno.io/v1", "PolicyException", "policyexceptions", True),
)


def guess_plural(kind: str) -> str:
    """Kubernetes' default plural for a kind (`NetworkPolicy` -> `networkpolicies`)."""
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def _split(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


@dataclass(frozen=True, slots=True)
class ResourceMapper:
    """Immutable kind <-> resource table: built-ins plus CRDs."""

    by_kind: Mapping[tuple[str, str], ResourceType]
    """(apiVersion, Kind) -> type."""
    by_resource: Mapping[tuple[str, str], ResourceType]
    """(apiVersion, resource) -> type."""

    @classmethod
    def build(cls, crds: Iterable[Mapping[str, Any]] = ()) -> ResourceMapper:
        types = [ResourceType(*_split(av), kind, resource, namespaced) for av, kind, resource, namespaced in _BUILT_IN]
        for crd in crds:
            types.extend(_types_from_crd(crd))
        return cls(
            by_kind={(t.api_version, t.kind): t for t in types},
            by_resource={(t.api_version, t.resource): t for t in types},
        )

    def for_kind(self, api_version: str, kind: str) -> ResourceType:
        """The resource type of a kind; unknown kinds get the guessed plural and are namespaced."""
        known = self.by_kind.get((api_version, kind))
        if known is not None:
            return known
        group, version = _split(api_version)
        return ResourceType(group, version, kind, guess_plural(kind), True)

    def for_resource(self, api_version: str, resource: str) -> ResourceType | None:
        return self.by_resource.get((api_version, resource))

    def plural(self, api_version: str, kind: str) -> str:
        return self.for_kind(api_version, kind).resource

    def kind_for(self, api_version: str, resource: str) -> str | None:
        known = self.by_resource.get((api_version, resource))
        if known is not None:
            return known.kind
        for (_, plural), found in self.by_resource.items():
            if plural == resource and found.group == _split(api_version)[0]:
                return found.kind
        return None


def _types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    if crd.get("kind") != "CustomResourceDefinition":
        return []
    spec = crd.get("spec")
    if not isinstance(spec, Mapping):
        return []
    names = spec.get("names") if isinstance(spec.get("names"), Mapping) else {}
    assert isinstance(names, Mapping)
    group, kind, plural = spec.get("group"), names.get("kind"), names.get("plural")
    if not (isinstance(group, str) and isinstance(kind, str)):
        return []
    plural = plural if isinstance(plural, str) else guess_plural(kind)
    namespaced = spec.get("scope", "Namespaced") != "Cluster"
    versions = spec.get("versions") if isinstance(spec.get("versions"), list) else []
    assert isinstance(versions, list)
    result = []
    for version in versions:
        if isinstance(version, Mapping) and isinstance(version.get("name"), str):
            result.append(ResourceType(group, version["name"], kind, plural, namespaced))
    return result


DEFAULT_MAPPER = ResourceMapper.build()
