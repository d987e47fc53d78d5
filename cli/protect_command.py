"""`celvern protect KIND/NAME` and `celvern unprotect KIND/NAME`: switch deletion protection on and off.

Why this module exists: the deletion-protection policies under policies/validating/deletion-protection deny DELETE
of objects labelled `celvern.io/deletion-protection: "enabled"`, and their denial messages tell the user to run
`celvern unprotect ...`. These commands set and remove that label through the `webhook.cluster.Cluster` seam, with
optimistic concurrency (read, change the label, update with the read resourceVersion, retry a bounded number of
times on 409 Conflict), so that a concurrent edit of the object is never overwritten.

KIND is resolved offline from `engine.resources.DEFAULT_MAPPER` like kubectl does it: a kind (`Namespace`), a
plural (`services`), a short name (`ns`, `svc`), optionally qualified with a group (`deployments.apps`,
`Database.postgres.example.com`) and a version (`deployments.v1.apps`). A qualified kind the built-in table does not
know is looked up as a CustomResourceDefinition in the cluster, which gives its version, plural and scope.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from engine.errors import CelvernError
from engine.resources import DEFAULT_MAPPER, ResourceMapper, ResourceType, guess_plural
from webhook.cluster import ApiError, Cluster

PROTECTION_LABEL = "celvern.io/deletion-protection"
PROTECTION_VALUE = "enabled"
MAX_ATTEMPTS = 5
"""Read-modify-update rounds before giving up when the object keeps changing under us (409 Conflict)."""
RETRY_DELAY = 0.05
"""Seconds before the first retry; doubled after each conflict."""

SHORT_NAMES = {
    "ns": "namespaces",
    "svc": "services",
    "cm": "configmaps",
    "sa": "serviceaccounts",
    "pvc": "persistentvolumeclaims",
    "pv": "persistentvolumes",
    "deploy": "deployments",
    "ds": "daemonsets",
    "sts": "statefulsets",
    "rs": "replicasets",
    "ing": "ingresses",
    "netpol": "networkpolicies",
    "crd": "customresourcedefinitions",
    "crds": "customresourcedefinitions",
    "pdb": "poddisruptionbudgets",
    "sc": "storageclasses",
    "pc": "priorityclasses",
    "no": "nodes",
    "po": "pods",
    "hpa": "horizontalpodautoscalers",
}
"""kubectl's short names for the built-in kinds people protect."""

DEPRECATED_GROUPS = frozenset({"extensions"})
"""Groups that still serve old copies of kinds now served elsewhere: never chosen for an unqualified kind."""

CRDS = DEFAULT_MAPPER.for_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
_VERSION = re.compile(r"^v\d+((alpha|beta)\d+)?$")


class ProtectError(CelvernError):
    """The protection could not be changed: unknown kind, missing object, API error, or too many conflicts."""


@dataclass(frozen=True, slots=True)
class Target:
    """What the user named: `kind` as typed (without group and version), optional version and group, object name."""

    kind: str
    version: str
    group: str | None
    name: str


def parse_target(text: str) -> Target:
    """`KIND[.VERSION][.GROUP]/NAME` -> Target; a group of `""` is never produced (`None` means unqualified)."""
    kind_text, slash, name = text.partition("/")
    if not slash or not kind_text or not name or "/" in name:
        raise click.BadParameter(f"expected KIND/NAME (e.g. namespace/payments), got {text!r}", param_hint="TARGET")
    kind, _, qualifier = kind_text.partition(".")
    version, group = "", qualifier or None
    if qualifier:
        first, _, rest = qualifier.partition(".")
        if _VERSION.match(first):
            version, group = first, rest or ""
    return Target(kind, version, group, name)


def _stability(version: str) -> tuple[int, int]:
    """Sort key preferring GA over beta over alpha, then higher versions."""
    match = re.match(r"^v(\d+)(alpha|beta)?(\d+)?$", version)
    if match is None:
        return (0, 0)
    rank = {"alpha": 1, "beta": 2, None: 3}[match.group(2)]
    return (rank, int(match.group(1)))


def resolve_kind(target: Target, mapper: ResourceMapper = DEFAULT_MAPPER) -> ResourceType | None:
    """The built-in resource type the target names, or None when the table does not know it.

    Raises ProtectError when an unqualified kind names resources in several groups (say which one with KIND.GROUP).
    """
    word = SHORT_NAMES.get(target.kind.lower(), target.kind.lower())
    candidates = [
        resource
        for resource in mapper.by_kind.values()
        if word in (resource.kind.lower(), resource.resource)
        and (target.group is None or resource.group == target.group)
        and (not target.version or resource.version == target.version)
    ]
    if target.group is None:
        candidates = [resource for resource in candidates if resource.group not in DEPRECATED_GROUPS]
    if not candidates:
        return None
    groups = {resource.group for resource in candidates}
    if len(groups) > 1:
        if "" not in groups:  # core wins, as in kubectl (`events` is core Event, not events.k8s.io)
            choices = ", ".join(sorted(f"{target.kind}.{group}" for group in groups))
            raise ProtectError(f"{target.kind!r} is ambiguous: say which with one of {choices}")
        candidates = [resource for resource in candidates if resource.group == ""]
    return max(candidates, key=lambda resource: _stability(resource.version))


def resolve_custom(cluster: Cluster, target: Target) -> ResourceType:
    """A custom resource type, from its CustomResourceDefinition in the cluster (named `plural.group`)."""
    if not target.group:
        raise ProtectError(
            f"unknown kind {target.kind!r}: qualify a custom resource with its group (e.g. {target.kind}.example.com)"
        )
    word = target.kind.lower()
    for plural in dict.fromkeys((word, guess_plural(target.kind))):
        crd = cluster.get(CRDS, "", f"{plural}.{target.group}")
        if crd is not None:
            return _from_crd(crd, target)
    raise ProtectError(
        f"unknown kind {target.kind}.{target.group}: no CustomResourceDefinition "
        f"{guess_plural(target.kind)}.{target.group} in the cluster"
    )


def _from_crd(crd: dict[str, Any], target: Target) -> ResourceType:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = [v for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("served", True)]
    if target.version:
        versions = [v for v in versions if v.get("name") == target.version]
    if not versions:
        raise ProtectError(f"CustomResourceDefinition {crd['metadata']['name']} serves no version {target.version!r}")
    chosen = next((v for v in versions if v.get("storage")), versions[0])
    return ResourceType(
        str(spec.get("group")),
        str(chosen["name"]),
        str(names.get("kind")),
        str(names.get("plural")),
        spec.get("scope", "Namespaced") != "Cluster",
    )


def describe(resource: ResourceType, namespace: str, name: str) -> str:
    qualified = resource.resource + (f".{resource.group}" if resource.group else "")
    return f"{qualified}/{name}" + (f" in namespace {namespace}" if resource.namespaced else "")


def set_protection(
    cluster: Cluster,
    resource: ResourceType,
    namespace: str,
    name: str,
    *,
    enabled: bool,
    attempts: int = MAX_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Add (or remove) the protection label; True when the object changed, False when it already was so.

    Each round reads the object and updates it with the resourceVersion it read, so a concurrent change makes the
    update fail with 409 instead of being overwritten; then the next round starts from the fresh object.
    """
    delay = RETRY_DELAY
    for attempt in range(1, attempts + 1):
        try:
            obj = cluster.get(resource, namespace, name)
            if obj is None:
                raise ProtectError(f"{describe(resource, namespace, name)} not found")
            metadata = obj.setdefault("metadata", {})
            labels: dict[str, str] = dict(metadata.get("labels") or {})
            if (labels.get(PROTECTION_LABEL) == PROTECTION_VALUE) if enabled else (PROTECTION_LABEL not in labels):
                return False  # nothing to do: no update, no new resourceVersion
            if enabled:
                labels[PROTECTION_LABEL] = PROTECTION_VALUE
            else:
                labels.pop(PROTECTION_LABEL, None)
            metadata["labels"] = labels
            cluster.update(resource, obj)
            return True
        except ApiError as error:
            if error.status == 404:
                raise ProtectError(f"{describe(resource, namespace, name)} not found") from None
            if error.status != 409:  # Conflict instances and plain ApiError(409) alike
                raise ProtectError(f"cannot update {describe(resource, namespace, name)}: {error}") from None
            if attempt == attempts:
                break
            sleep(delay)
            delay *= 2
    raise ProtectError(
        f"{describe(resource, namespace, name)} kept changing: gave up after {attempts} conflicting updates; try again"
    )


def _run(
    target_text: str,
    namespace: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    in_cluster: bool,
    *,
    enabled: bool,
) -> None:
    target = parse_target(target_text)
    builtin = resolve_kind(target)
    from webhook.kubernetes_cluster import ClusterConfigError, KubernetesCluster

    try:
        cluster = KubernetesCluster.connect(kubeconfig=kubeconfig, context=kube_context, in_cluster=in_cluster)
    except ClusterConfigError as error:
        raise ProtectError(str(error)) from None
    with cluster:
        try:
            resource = builtin if builtin is not None else resolve_custom(cluster, target)
        except ApiError as error:
            raise ProtectError(f"cannot look up kind {target.kind}: {error}") from None
        effective_namespace = (namespace or "default") if resource.namespaced else ""
        changed = set_protection(cluster, resource, effective_namespace, target.name, enabled=enabled)
    what = describe(resource, effective_namespace, target.name)
    if enabled:
        click.echo(f"{what} is protected from deletion" + ("" if changed else " (already)"))
    else:
        click.echo(f"{what} is no longer protected from deletion" + ("" if changed else " (it was not)"))


def _cluster_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        (
            click.argument("target", metavar="KIND/NAME"),
            click.option(
                "-n", "--namespace", default=None, help="Namespace of a namespaced object [default: default]."
            ),
            click.option(
                "--kubeconfig",
                type=click.Path(),
                default=None,
                help="Kubeconfig file (default: $KUBECONFIG or ~/.kube/config).",
            ),
            click.option("--context", "kube_context", default=None, help="Kubeconfig context."),
            click.option("--in-cluster", is_flag=True, help="Use the pod's service account."),
        )
    ):
        command = option(command)
    return command


@click.command("protect")
@_cluster_options
def protect_command(
    target: str, namespace: str | None, kubeconfig: str | None, kube_context: str | None, in_cluster: bool
) -> None:
    """Protect KIND/NAME from deletion (label it celvern.io/deletion-protection=enabled).

    KIND is a kind, plural or short name (namespace, services, svc), optionally with its group
    (Database.postgres.example.com).
    """
    _run(target, namespace, kubeconfig, kube_context, in_cluster, enabled=True)


@click.command("unprotect")
@_cluster_options
def unprotect_command(
    target: str, namespace: str | None, kubeconfig: str | None, kube_context: str | None, in_cluster: bool
) -> None:
    """Lift the deletion protection of KIND/NAME (remove the celvern.io/deletion-protection label).

    Objects protected by name in the protect-named-objects policy stay protected: edit that policy instead.
    """
    _run(target, namespace, kubeconfig, kube_context, in_cluster, enabled=False)
