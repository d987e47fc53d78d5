"""Differential test of the Pod Security library against an independent model of the Pod Security Standards.

Hypothesis generates Pods that aim at the controls' edge cases (Pod-level vs container-level precedence, an explicit
container value overriding the Pod's, missing vs empty vs null fields, init and ephemeral containers, Windows Pods,
`hostUsers: false`, Unconfined/RuntimeDefault/Localhost profiles, AppArmor annotations, capability spelling, host
ports 0, volume types, probe hosts, ...). For each level, the verdict of policies/validating/pod-security (does any
policy of the level fail the Pod, at the default kubernetesVersion, latest) must equal the verdict of the plain
Python model below.

The model is written from /work/shared/reference/ecosystem.md section 4.1 (which follows
kubernetes/pod-security-admission's check_*.go), not from the policies. It reads fields the way the Go structs do:
a JSON null is the same as an absent field, and an absent string is "". At the latest version:

- Baseline is controls 1-12 (Host Probes from v1.34, container_engine_t from v1.31, every sysctl version, the
  /proc mount exemption for `hostUsers: false` from v1.35; the seccomp annotations only count before v1.19).
- Restricted is Baseline plus controls 13-19, where restricted seccomp, capabilities and /proc mount replace
  (override) their Baseline counterparts, so Windows Pods are exempt from all seccomp and capability checks at
  Restricted. Volume Types also overrides HostPath Volumes in pod-security-admission; the library keeps
  disallow-host-path at Restricted, which gives the same verdict because every generated volume has at most one
  source (the API server rejects volumes with two).

Hand-written Pods then pin the model (and the library) on the named edge cases, and the Restricted policies are
checked at pinned kubernetesVersion values against the version notes of 4.1.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.evaluation import EvaluationContext
from engine.loader import load_paths, parse_text
from engine.policy_set import PolicySet, build_policy_set, run, split_documents
from engine.request import request_for_resource
from engine.results import Status

ROOT = Path(__file__).resolve().parents[2]
POD_SECURITY = ROOT / "policies" / "validating" / "pod-security"

BASELINE_POLICIES = (
    "disallow-host-process",
    "disallow-host-namespaces",
    "disallow-privileged-containers",
    "disallow-capabilities",
    "disallow-host-path",
    "disallow-host-ports",
    "disallow-host-probes",
    "restrict-apparmor-profiles",
    "disallow-selinux",
    "disallow-proc-mount",
    "restrict-seccomp",
    "restrict-sysctls",
)
RESTRICTED_POLICIES = (
    "restrict-volume-types",
    "disallow-privilege-escalation",
    "require-run-as-nonroot",
    "require-run-as-non-root-user",
    "restrict-seccomp-strict",
    "disallow-capabilities-strict",
    "restrict-proc-mount-strict",
)
REPLACED_AT_RESTRICTED = ("disallow-capabilities", "restrict-seccomp", "disallow-proc-mount")
LEVEL_POLICIES = {
    "baseline": BASELINE_POLICIES,
    "restricted": tuple(p for p in BASELINE_POLICIES if p not in REPLACED_AT_RESTRICTED) + RESTRICTED_POLICIES,
}
CATEGORIES = {
    **{name: "Pod Security Standards (Baseline)" for name in BASELINE_POLICIES},
    **{name: "Pod Security Standards (Restricted)" for name in RESTRICTED_POLICIES},
}

# ---------------------------------------------------------------------------------------------------------------
# The model (ecosystem.md 4.1), at the latest version
# ---------------------------------------------------------------------------------------------------------------


def get(value: Any, *path: str) -> Any:
    """The value at `path`, or None when a step is absent or null (Go's nil pointer).

    Pointer fields (the booleans, runAsUser, procMount) keep None apart from any value; plain string fields read
    None as "" (`text`), as Go decodes a JSON null into the zero value.
    """
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def text(value: Any) -> str:
    """A string field as Go reads it: absent and null are ""."""
    return "" if value is None else str(value)


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """containers, initContainers and ephemeralContainers (visitContainers)."""
    return [c for key in ("containers", "initContainers", "ephemeralContainers") for c in spec.get(key) or []]


def is_windows(spec: dict[str, Any]) -> bool:
    return get(spec, "os", "name") == "windows"


def user_namespace(spec: dict[str, Any]) -> bool:
    return spec.get("hostUsers") is False


DEFAULT_CAPABILITIES = frozenset(
    [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
)
ALLOWED_SYSCTLS = frozenset(
    [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",  # v1.27
        "net.ipv4.tcp_keepalive_time",  # v1.29
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",  # v1.32
        "net.ipv4.tcp_wmem",
        "net.ipv4.tcp_slow_start_after_idle",  # v1.37
        "net.ipv4.tcp_notsent_lowat",
    ]
)
SELINUX_TYPES = frozenset(["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"])
ALLOWED_VOLUME_SOURCES = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
    "image",
)
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def host_process(pod: dict[str, Any]) -> bool:  # 1
    spec = pod["spec"]
    return get(spec, "securityContext", "windowsOptions", "hostProcess") is True or any(
        get(c, "securityContext", "windowsOptions", "hostProcess") is True for c in all_containers(spec)
    )


def host_namespaces(pod: dict[str, Any]) -> bool:  # 2
    return any(pod["spec"].get(key) is True for key in ("hostNetwork", "hostPID", "hostIPC"))


def privileged(pod: dict[str, Any]) -> bool:  # 3
    return any(get(c, "securityContext", "privileged") is True for c in all_containers(pod["spec"]))


def capabilities_baseline(pod: dict[str, Any]) -> bool:  # 4
    return any(
        cap not in DEFAULT_CAPABILITIES
        for c in all_containers(pod["spec"])
        for cap in get(c, "securityContext", "capabilities", "add") or []
    )


def host_path_volumes(pod: dict[str, Any]) -> bool:  # 5
    return any(get(v, "hostPath") is not None for v in pod["spec"].get("volumes") or [])


def host_ports(pod: dict[str, Any]) -> bool:  # 6
    return any((get(port, "hostPort") or 0) != 0 for c in all_containers(pod["spec"]) for port in c.get("ports") or [])


def host_probes(pod: dict[str, Any]) -> bool:  # 7 (v1.34+)
    def handler_has_host(handler: Any) -> bool:
        return text(get(handler, "httpGet", "host")) != "" or text(get(handler, "tcpSocket", "host")) != ""

    return any(
        handler_has_host(get(c, probe))
        for c in all_containers(pod["spec"])
        for probe in ("livenessProbe", "readinessProbe", "startupProbe")
    ) or any(
        handler_has_host(get(c, "lifecycle", hook))
        for c in all_containers(pod["spec"])
        for hook in ("postStart", "preStop")
    )


def app_armor(pod: dict[str, Any]) -> bool:  # 8
    spec = pod["spec"]
    contexts = [get(spec, "securityContext")] + [get(c, "securityContext") for c in all_containers(spec)]
    for context in contexts:
        profile = get(context, "appArmorProfile")
        if profile is not None and text(profile.get("type")) not in ("RuntimeDefault", "Localhost"):
            return True
    for key, value in (get(pod, "metadata", "annotations") or {}).items():
        value = text(value)
        if key.startswith(APPARMOR_ANNOTATION_PREFIX) and not (
            value == "" or value == "runtime/default" or value.startswith("localhost/")
        ):
            return True
    return False


def se_linux(pod: dict[str, Any]) -> bool:  # 9
    spec = pod["spec"]
    contexts = [get(spec, "securityContext")] + [get(c, "securityContext") for c in all_containers(spec)]
    for context in contexts:
        options = get(context, "seLinuxOptions")
        if options is None:
            continue
        if text(options.get("type")) not in SELINUX_TYPES or text(options.get("user")) or text(options.get("role")):
            return True
    return False


def proc_mount_baseline(pod: dict[str, Any]) -> bool:  # 10 (hostUsers: false exemption, v1.35+)
    spec = pod["spec"]
    return not user_namespace(spec) and proc_mount_restricted(pod)


def seccomp_baseline(pod: dict[str, Any]) -> bool:  # 11 (v1.19+: the fields; annotations no longer count)
    spec = pod["spec"]
    contexts = [get(spec, "securityContext")] + [get(c, "securityContext") for c in all_containers(spec)]
    return any(
        (profile := get(context, "seccompProfile")) is not None
        and text(profile.get("type")) not in ("RuntimeDefault", "Localhost")
        for context in contexts
    )


def sysctls(pod: dict[str, Any]) -> bool:  # 12
    return any(
        text(get(sysctl, "name")) not in ALLOWED_SYSCTLS
        for sysctl in get(pod["spec"], "securityContext", "sysctls") or []
    )


def restricted_volumes(pod: dict[str, Any]) -> bool:  # 13
    return any(
        not any(get(v, source) is not None for source in ALLOWED_VOLUME_SOURCES)
        for v in pod["spec"].get("volumes") or []
    )


def allow_privilege_escalation(pod: dict[str, Any]) -> bool:  # 14 (Windows exempt from v1.25)
    spec = pod["spec"]
    if is_windows(spec):
        return False
    return any(get(c, "securityContext", "allowPrivilegeEscalation") is not False for c in all_containers(spec))


def run_as_non_root(pod: dict[str, Any]) -> bool:  # 15 (hostUsers: false exempt from v1.35)
    spec = pod["spec"]
    if user_namespace(spec):
        return False
    pod_value = get(spec, "securityContext", "runAsNonRoot")
    if pod_value is False:
        return True
    for c in all_containers(spec):
        value = get(c, "securityContext", "runAsNonRoot")
        if value is False or (value is None and pod_value is not True):
            return True
    return False


def run_as_user(pod: dict[str, Any]) -> bool:  # 16 (hostUsers: false exempt from v1.35)
    spec = pod["spec"]
    if user_namespace(spec):
        return False
    contexts = [get(spec, "securityContext")] + [get(c, "securityContext") for c in all_containers(spec)]
    return any(get(context, "runAsUser") == 0 for context in contexts)


def seccomp_restricted(pod: dict[str, Any]) -> bool:  # 17 (Windows exempt from v1.25)
    spec = pod["spec"]
    if is_windows(spec):
        return False
    valid = ("RuntimeDefault", "Localhost")
    pod_profile = get(spec, "securityContext", "seccompProfile")
    if pod_profile is not None and text(pod_profile.get("type")) not in valid:
        return True
    pod_set = pod_profile is not None
    for c in all_containers(spec):
        profile = get(c, "securityContext", "seccompProfile")
        if profile is None:
            if not pod_set:
                return True
        elif text(profile.get("type")) not in valid:
            return True
    return False


def capabilities_restricted(pod: dict[str, Any]) -> bool:  # 18 (Windows exempt from v1.25)
    spec = pod["spec"]
    if is_windows(spec):
        return False
    for c in all_containers(spec):
        caps = get(c, "securityContext", "capabilities")
        if caps is None or "ALL" not in (caps.get("drop") or []):
            return True
        if any(cap != "NET_BIND_SERVICE" for cap in caps.get("add") or []):
            return True
    return False


def proc_mount_restricted(pod: dict[str, Any]) -> bool:  # 19 (v1.35+)
    # procMount is a pointer: absent and null are unset, but "" is a value, and not Default
    return any(get(c, "securityContext", "procMount") not in (None, "Default") for c in all_containers(pod["spec"]))


Check = Callable[[dict[str, Any]], bool]
BASELINE_CHECKS: dict[str, Check] = {
    "windowsHostProcess": host_process,
    "hostNamespaces": host_namespaces,
    "privileged": privileged,
    "capabilities_baseline": capabilities_baseline,
    "hostPathVolumes": host_path_volumes,
    "hostPorts": host_ports,
    "hostProbesAndHostLifecycle": host_probes,
    "appArmorProfile": app_armor,
    "seLinuxOptions": se_linux,
    "procMount": proc_mount_baseline,
    "seccompProfile_baseline": seccomp_baseline,
    "sysctls": sysctls,
}
RESTRICTED_CHECKS: dict[str, Check] = {
    "restrictedVolumes": restricted_volumes,
    "allowPrivilegeEscalation": allow_privilege_escalation,
    "runAsNonRoot": run_as_non_root,
    "runAsUser": run_as_user,
    "seccompProfile_restricted": seccomp_restricted,
    "capabilities_restricted": capabilities_restricted,
    "procMount_restricted": proc_mount_restricted,
}
OVERRIDDEN = {"capabilities_baseline", "seccompProfile_baseline", "procMount", "hostPathVolumes"}
MODEL: dict[str, dict[str, Check]] = {
    "baseline": BASELINE_CHECKS,
    "restricted": {
        **{k: v for k, v in BASELINE_CHECKS.items() if k not in OVERRIDDEN},
        **RESTRICTED_CHECKS,
    },
}


def model_failures(level: str, pod: dict[str, Any]) -> list[str]:
    """The check IDs of `level` that forbid the Pod."""
    return [check_id for check_id, check in MODEL[level].items() if check(pod)]


# ---------------------------------------------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------------------------------------------

MISSING: Any = object()
"""A field left out (as opposed to null, which is `None`)."""

# Controls whose fields get out-of-policy values in an example ("wild"); the other controls only get compliant
# values (still varied: absent, null, explicit, Pod-level or container-level), so that a Pod often passes a level
# and a failure usually comes from one or two controls.
CONTROLS = (
    "hostProcess",
    "hostNamespaces",
    "privileged",
    "capabilities",
    "volumes",
    "hostPorts",
    "probes",
    "appArmor",
    "seLinux",
    "procMount",
    "seccomp",
    "sysctls",
    "allowPrivilegeEscalation",
    "runAsNonRoot",
    "runAsUser",
)

BOOL_SAFE = [MISSING, None, False]
PROFILE_TYPES_OK = [{"type": "RuntimeDefault"}, {"type": "Localhost", "localhostProfile": "profiles/audit.json"}]
PROFILE_TYPES_BAD = [{"type": "Unconfined"}, {}, {"type": None}, {"type": "runtimedefault"}, {"type": "Localhost "}]
SELINUX_OK = [
    {},
    {"type": "container_t"},
    {"type": "container_init_t"},
    {"type": "container_kvm_t"},
    {"type": "container_engine_t"},
    {"type": None, "user": None, "role": None},
    {"type": "", "user": "", "role": "", "level": "s0:c123,c456"},
]
SELINUX_BAD = [{"type": "spc_t"}, {"type": "Container_t"}, {"user": "system_u"}, {"role": "object_r"}]
SYSCTLS_OK = sorted(ALLOWED_SYSCTLS)
SYSCTLS_BAD = ["kernel.msgmax", "net.core.somaxconn", "net.ipv4.ip_forward", "Kernel.shm_rmid_forced", "", None]
APPARMOR_VALUES_OK = ["runtime/default", "localhost/k8s-apparmor-example", "localhost/", "", None]
APPARMOR_VALUES_BAD = ["unconfined", "Localhost/profile", "docker/default", "runtime/default/", "RuntimeDefault"]
VOLUMES_OK: list[dict[str, Any]] = [
    {"configMap": {"name": "config"}},
    {"secret": {"secretName": "creds"}},
    {"emptyDir": {}},
    {"persistentVolumeClaim": {"claimName": "data"}},
    {"projected": {"sources": []}},
    {"downwardAPI": {"items": []}},
    {"csi": {"driver": "secrets-store.csi.k8s.io"}},
    {"ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
    {"image": {"reference": "registry.example.com/models:v1"}},
]
VOLUMES_BAD: list[dict[str, Any]] = [
    {"hostPath": {"path": "/var/run/docker.sock"}},
    {"hostPath": None},
    {"nfs": {"server": "nfs.example.com", "path": "/"}},
    {"gitRepo": {"repository": "https://example.com/repo.git"}},
    {"awsElasticBlockStore": {"volumeID": "vol-1"}},
    {"rbd": {"image": "x", "monitors": []}},
    {"flexVolume": {"driver": "example/flex"}},
    {"cephfs": {"monitors": []}},
    {},
    {"configMap": None},
    {"emptyDir": None},
    {"persistentVolumeClaim": None},
    {"unknownSource": {}},
]
CAPS_DROP_OK = [["ALL"], ["NET_RAW", "ALL"], ["ALL", "all"]]
CAPS_DROP_BAD = [MISSING, None, [], ["all"], ["All"], ["NET_RAW"], ["SYS_ADMIN", "NET_RAW"]]
CAPS_ADD_OK = [MISSING, None, [], ["NET_BIND_SERVICE"]]
CAPS_ADD_BAD = [
    ["SYS_ADMIN"],
    ["NET_RAW"],
    ["CHOWN"],
    ["net_bind_service"],
    ["ALL"],
    ["NET_BIND_SERVICE", "SETUID"],
    ["CAP_SYS_ADMIN"],
    ["KILL", "SYS_CHROOT", "AUDIT_WRITE"],
]
PROC_MOUNT_OK = [MISSING, None, "Default"]
PROC_MOUNT_BAD = ["Unmasked", "default", ""]


def present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not MISSING}


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    # mostly one or two wild controls, so that a Pod's verdict often hangs on one control's edge case
    size = draw(st.sampled_from([1, 1, 1, 1, 2, 2, 0, 3, len(CONTROLS)]))
    wild = set(draw(st.lists(st.sampled_from(CONTROLS), min_size=size, max_size=size, unique=True)))

    # a field of a wild control takes one of its bad values with probability 1/odds, else a safe one
    odds = draw(st.sampled_from([2, 3, 5]))

    def pick(control: str, safe: Iterable[Any], bad: Iterable[Any] = ()) -> Any:
        bad = list(bad)
        wrong = bool(bad) and control in wild and draw(st.integers(1, odds)) == odds
        value = draw(st.sampled_from(bad if wrong else list(safe)))
        return value if value is MISSING else copy.deepcopy(value)

    os_names = [None, "linux", "Windows", "windows"]
    pod_os = draw(st.sampled_from([MISSING, None, {}, *({"name": name} for name in os_names)]))
    host_users = draw(st.sampled_from([MISSING, None, True, False]))

    # Pod-level values that decide what containers must set
    pod_non_root = pick("runAsNonRoot", [MISSING, None, True], [False])
    pod_seccomp = pick("seccomp", [MISSING, None, *PROFILE_TYPES_OK], PROFILE_TYPES_BAD)
    pod_seccomp_ok = isinstance(pod_seccomp, dict) and pod_seccomp.get("type") in ("RuntimeDefault", "Localhost")

    def context_fields(container_level: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "runAsUser": pick("runAsUser", [MISSING, None, 1000, 65534], [0]),
            "seLinuxOptions": pick("seLinux", [MISSING, None, *SELINUX_OK], SELINUX_BAD),
            "appArmorProfile": pick("appArmor", [MISSING, None, *PROFILE_TYPES_OK], PROFILE_TYPES_BAD),
            "windowsOptions": pick(
                "hostProcess",
                [MISSING, None, {}, {"hostProcess": None}, {"hostProcess": False}],
                [{"hostProcess": True}],
            ),
        }
        if container_level:
            # what a container must set depends on the Pod level: an unset value inherits a good Pod value
            unset = [MISSING, None]
            non_root_safe, non_root_bad = (
                ([*unset, True], [False]) if pod_non_root is True else ([True], [*unset, False])
            )
            seccomp_safe, seccomp_bad = (
                ([*unset, *PROFILE_TYPES_OK], PROFILE_TYPES_BAD)
                if pod_seccomp_ok
                else (PROFILE_TYPES_OK, [*unset, *PROFILE_TYPES_BAD])
            )
            fields |= {
                "runAsNonRoot": pick("runAsNonRoot", non_root_safe, non_root_bad),
                "seccompProfile": pick("seccomp", seccomp_safe, seccomp_bad),
                "privileged": pick("privileged", BOOL_SAFE, [True]),
                "allowPrivilegeEscalation": pick("allowPrivilegeEscalation", [False], [MISSING, None, True]),
                "procMount": pick("procMount", PROC_MOUNT_OK, PROC_MOUNT_BAD),
                "capabilities": pick(
                    "capabilities",
                    [present({"drop": drop, "add": add}) for drop in CAPS_DROP_OK for add in CAPS_ADD_OK],
                    [MISSING, None, {}]
                    + [present({"drop": drop, "add": add}) for drop in CAPS_DROP_BAD for add in CAPS_ADD_OK[:2]]
                    + [present({"drop": drop, "add": add}) for drop in CAPS_DROP_OK[:1] for add in CAPS_ADD_BAD],
                ),
            }
        else:
            fields |= {
                "runAsNonRoot": pod_non_root,
                "seccompProfile": pod_seccomp,
                "sysctls": pick(
                    "sysctls",
                    [MISSING, None, [], *([{"name": name, "value": "1"}] for name in SYSCTLS_OK)],
                    [[{"name": name, "value": "1"}] for name in SYSCTLS_BAD]
                    + [[{"name": SYSCTLS_OK[0], "value": "1"}, {"name": SYSCTLS_BAD[0], "value": "1"}]],
                ),
            }
        return present(fields)

    def security_context(fields: dict[str, Any]) -> Any:
        if fields:
            return fields
        return draw(st.sampled_from([MISSING, None, {}]))

    def handler() -> Any:
        host = pick("probes", [MISSING, None, ""], ["example.com", "127.0.0.1", "localhost"])
        kind = draw(st.sampled_from(["httpGet", "tcpSocket", "exec"]))
        if kind == "exec":
            return {"exec": {"command": ["true"]}}
        return {kind: present({"port": 8080, "host": host})}

    def container(name: str) -> dict[str, Any]:
        c: dict[str, Any] = {"name": name, "image": "registry.example.com/app:1"}
        c["securityContext"] = security_context(context_fields(container_level=True))
        if draw(st.booleans()):
            c["ports"] = pick(
                "hostPorts",
                [
                    MISSING,
                    None,
                    [],
                    [{"containerPort": 8080}],
                    [{"containerPort": 8080, "hostPort": 0}],
                    [{"containerPort": 8080, "hostPort": None}],
                ],
                [[{"containerPort": 8080, "hostPort": 8080}], [{"containerPort": 53, "hostPort": 0}, {"hostPort": 1}]],
            )
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if draw(st.integers(0, 3)) == 0:
                c[probe] = handler()
        if draw(st.integers(0, 3)) == 0:
            c["lifecycle"] = present(
                {
                    "postStart": handler() if draw(st.booleans()) else MISSING,
                    "preStop": handler() if draw(st.booleans()) else MISSING,
                }
            )
        return present(c)

    def container_list(prefix: str, minimum: int) -> Any:
        count = draw(st.integers(minimum, 2))
        listed = [container(f"{prefix}{i}") for i in range(count)]
        if minimum == 0 and not listed:
            return draw(st.sampled_from([MISSING, None, []]))
        return listed

    spec: dict[str, Any] = {
        "os": pod_os,
        "hostUsers": host_users,
        "hostNetwork": pick("hostNamespaces", BOOL_SAFE, [True]),
        "hostPID": pick("hostNamespaces", BOOL_SAFE, [True]),
        "hostIPC": pick("hostNamespaces", BOOL_SAFE, [True]),
        "securityContext": security_context(context_fields(container_level=False)),
        "containers": container_list("app", 1),
        "initContainers": container_list("init", 0),
        "ephemeralContainers": container_list("debug", 0),
    }
    volume_count = draw(st.integers(0, 2))
    if volume_count:
        spec["volumes"] = [{"name": f"vol{i}", **pick("volumes", VOLUMES_OK, VOLUMES_BAD)} for i in range(volume_count)]
    else:
        spec["volumes"] = draw(st.sampled_from([MISSING, None, []]))

    annotations: dict[str, Any] = {}
    names = [c["name"] for c in all_containers(present(spec))]
    for name in draw(st.lists(st.sampled_from([*names, "ghost"]), max_size=2, unique=True)):
        annotations[APPARMOR_ANNOTATION_PREFIX + name] = pick("appArmor", APPARMOR_VALUES_OK, APPARMOR_VALUES_BAD)
    if draw(st.booleans()):  # legacy seccomp annotations: ignored from v1.19
        annotations["seccomp.security.alpha.kubernetes.io/pod"] = draw(
            st.sampled_from(["unconfined", "runtime/default", "localhost/profile.json"])
        )
        annotations["container.seccomp.security.alpha.kubernetes.io/" + names[0]] = "unconfined"
    metadata: dict[str, Any] = {"name": "generated", "namespace": "tenant"}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": present(spec)}


# ---------------------------------------------------------------------------------------------------------------
# The library
# ---------------------------------------------------------------------------------------------------------------


def compile_level(level: str) -> PolicySet:
    paths = [POD_SECURITY / name / "policy.yaml" for name in LEVEL_POLICIES[level]]
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.is_file()]
    assert not missing, f"missing Pod Security policies: {missing}"
    for path in paths:
        document = yaml.safe_load(path.read_text())
        assert document["metadata"]["annotations"]["policies.kyverno.io/category"] == CATEGORIES[path.parent.name]
    policies, others = split_documents(load_paths(paths))
    assert not others and len(policies) == len(paths)
    return build_policy_set(policies)


POLICY_SETS: dict[str, PolicySet] = {}


def policy_set(level: str) -> PolicySet:
    if level not in POLICY_SETS:
        POLICY_SETS[level] = compile_level(level)
    return POLICY_SETS[level]


def library_failures(level: str, pod: dict[str, Any]) -> list[str]:
    """The policies of `level` that fail the Pod; any result other than pass or fail is an error."""
    evaluation = run(policy_set(level), EvaluationContext(request=request_for_resource(pod)))
    failed: list[str] = []
    for response in evaluation.responses:
        assert response.rules, f"{response.policy.name} did not match the Pod"
        for rule in response.rules:
            assert rule.status in (Status.PASS, Status.FAIL), (
                f"{response.policy.name}: {rule.status} {rule.message}\n{dump(pod)}"
            )
            if rule.status is Status.FAIL:
                failed.append(response.policy.name)
    return failed


def dump(pod: dict[str, Any]) -> str:
    return json.dumps(pod, indent=1)


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------

# Generating a Pod costs several times more than evaluating it, so every example is checked at both levels:
# 2000 Pods, 4000 comparisons, about 30 s on two cores.
EXAMPLES = 2000


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=pods())
def test_library_agrees_with_the_model(pod: dict[str, Any]) -> None:
    for level in LEVEL_POLICIES:
        expected = model_failures(level, pod)
        actual = library_failures(level, copy.deepcopy(pod))
        assert bool(actual) == bool(expected), (
            f"{level}: the model says {'fail ' + str(expected) if expected else 'pass'}, the library says "
            f"{'fail ' + str(actual) if actual else 'pass'}\n{dump(pod)}"
        )


# Hand-written Pods pin down the model itself on the edge cases of ecosystem.md 4.1 and 5.4 item 9, so that a
# wrong model cannot silently agree with a wrong policy.
def pod(**spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "nginx"}])
    annotations = spec.pop("annotations", None)
    metadata: dict[str, Any] = {"name": "p", "namespace": "tenant"}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


RESTRICTED_SC = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}


def compliant(**extra: Any) -> dict[str, Any]:
    return {"name": "app", "image": "nginx", "securityContext": {**RESTRICTED_SC, **extra}}


EDGE_CASES: list[tuple[str, dict[str, Any], list[str], list[str] | None]] = [
    (
        "empty pod",
        pod(),
        [],
        ["allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile_restricted", "capabilities_restricted"],
    ),
    ("compliant", pod(containers=[compliant()]), [], []),
    (
        "container false overrides pod true",
        pod(securityContext={"runAsNonRoot": True}, containers=[compliant(runAsNonRoot=False)]),
        [],
        ["runAsNonRoot"],
    ),
    (
        "pod false, container true",
        pod(securityContext={"runAsNonRoot": False}, containers=[compliant()]),
        [],
        ["runAsNonRoot"],
    ),
    (
        "pod true, container null",
        pod(securityContext={"runAsNonRoot": True}, containers=[compliant(runAsNonRoot=None)]),
        [],
        [],
    ),
    ("hostUsers false", pod(hostUsers=False, containers=[compliant(runAsNonRoot=False, runAsUser=0)]), [], []),
    (
        "hostUsers false keeps procMount strict",
        pod(hostUsers=False, containers=[compliant(procMount="Unmasked")]),
        [],
        ["procMount_restricted"],
    ),
    ("procMount Unmasked", pod(containers=[compliant(procMount="Unmasked")]), ["procMount"], ["procMount_restricted"]),
    (
        "ephemeral container",
        pod(containers=[compliant()], ephemeralContainers=[{"name": "debug", "image": "busybox"}]),
        [],
        ["runAsNonRoot", "allowPrivilegeEscalation", "seccompProfile_restricted", "capabilities_restricted"],
    ),
    (
        "windows exemptions",
        pod(os={"name": "windows"}, securityContext={"runAsNonRoot": True}),
        [],
        [],
    ),
    (
        "windows does not exempt baseline capabilities at baseline",
        pod(
            os={"name": "windows"},
            securityContext={"runAsNonRoot": True},
            containers=[{"name": "app", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
        ),
        ["capabilities_baseline"],
        [],
    ),
    (
        "unconfined pod seccomp with compliant containers",
        pod(securityContext={"seccompProfile": {"type": "Unconfined"}}, containers=[compliant()]),
        ["seccompProfile_baseline"],
        ["seccompProfile_restricted"],
    ),
    (
        "seccomp profile without a type",
        pod(containers=[compliant(seccompProfile={})]),
        ["seccompProfile_baseline"],
        ["seccompProfile_restricted"],
    ),
    (
        "legacy seccomp annotation is ignored",
        pod(annotations={"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}, containers=[compliant()]),
        [],
        [],
    ),
    (
        "apparmor annotations",
        pod(
            annotations={
                APPARMOR_ANNOTATION_PREFIX + "app": "localhost/x",
                APPARMOR_ANNOTATION_PREFIX + "ghost": "unconfined",
            },
            containers=[compliant()],
        ),
        ["appArmorProfile"],
        ["appArmorProfile"],
    ),
    (
        "lowercase all",
        pod(containers=[compliant(capabilities={"drop": ["all"], "add": ["NET_BIND_SERVICE"]})]),
        [],
        ["capabilities_restricted"],
    ),
    ("host port 0", pod(containers=[{"name": "app", "ports": [{"containerPort": 80, "hostPort": 0}]}]), [], None),
    (
        "probe host",
        pod(containers=[{"name": "app", "readinessProbe": {"tcpSocket": {"port": 80, "host": "10.0.0.1"}}}]),
        ["hostProbesAndHostLifecycle"],
        None,
    ),
    ("sysctl", pod(securityContext={"sysctls": [{"name": "net.core.somaxconn", "value": "1"}]}), ["sysctls"], None),
    ("hostPath", pod(volumes=[{"name": "v", "hostPath": {"path": "/"}}]), ["hostPathVolumes"], None),
    ("nfs", pod(containers=[compliant()], volumes=[{"name": "v", "nfs": {}}]), [], ["restrictedVolumes"]),
]


@pytest.mark.parametrize(
    ("pod_", "baseline", "restricted"), [case[1:] for case in EDGE_CASES], ids=[case[0] for case in EDGE_CASES]
)
def test_edge_cases(pod_: dict[str, Any], baseline: list[str], restricted: list[str] | None) -> None:
    """The model gives the expected check IDs (None: not pinned), and the library the same verdicts."""
    assert model_failures("baseline", pod_) == baseline
    if restricted is not None:
        assert sorted(model_failures("restricted", pod_)) == sorted(restricted)
    for level in ("baseline", "restricted"):
        assert bool(library_failures(level, copy.deepcopy(pod_))) == bool(model_failures(level, pod_)), level


# Version pinning (ecosystem.md 5.4 item 9): the Restricted controls' version notes in 4.1, with the policy's
# kubernetesVersion parameter set as `celvern library instantiate --set` would (the literal replaced).
WINDOWS = pod(os={"name": "windows"})
LINUX = pod()
USER_NAMESPACE = pod(hostUsers=False)
ROOT_UID = pod(securityContext={"runAsUser": 0})
ROOT_UID_USER_NAMESPACE = pod(hostUsers=False, securityContext={"runAsUser": 0})
UNMASKED = pod(containers=[{"name": "app", "securityContext": {"procMount": "Unmasked"}}])
VERSION_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("disallow-privilege-escalation", "v1.7", LINUX, "pass"),  # the control exists from v1.8
    ("disallow-privilege-escalation", "v1.8", LINUX, "fail"),
    ("disallow-privilege-escalation", "v1.24", WINDOWS, "fail"),  # Windows exemption from v1.25
    ("disallow-privilege-escalation", "v1.25", WINDOWS, "pass"),
    ("require-run-as-nonroot", "v1.0", LINUX, "fail"),
    ("require-run-as-nonroot", "v1.34", USER_NAMESPACE, "fail"),  # hostUsers: false exemption from v1.35
    ("require-run-as-nonroot", "v1.35", USER_NAMESPACE, "pass"),
    ("require-run-as-non-root-user", "v1.22", ROOT_UID, "pass"),  # the control exists from v1.23
    ("require-run-as-non-root-user", "v1.23", ROOT_UID, "fail"),
    ("require-run-as-non-root-user", "v1.34", ROOT_UID_USER_NAMESPACE, "fail"),
    ("require-run-as-non-root-user", "v1.35", ROOT_UID_USER_NAMESPACE, "pass"),
    ("restrict-seccomp-strict", "v1.18", LINUX, "pass"),  # the control exists from v1.19
    ("restrict-seccomp-strict", "v1.19", LINUX, "fail"),
    ("restrict-seccomp-strict", "v1.24", WINDOWS, "fail"),
    ("restrict-seccomp-strict", "v1.25", WINDOWS, "pass"),
    ("disallow-capabilities-strict", "v1.21", LINUX, "pass"),  # the control exists from v1.22
    ("disallow-capabilities-strict", "v1.22", LINUX, "fail"),
    ("disallow-capabilities-strict", "v1.24", WINDOWS, "fail"),
    ("disallow-capabilities-strict", "v1.25", WINDOWS, "pass"),
    ("restrict-proc-mount-strict", "v1.34", UNMASKED, "pass"),  # the control exists from v1.35
    ("restrict-proc-mount-strict", "v1.35", UNMASKED, "fail"),
    ("restrict-volume-types", "latest", pod(volumes=[{"name": "v", "nfs": {}}]), "fail"),
    ("disallow-capabilities-strict", "1.30", LINUX, "fail"),  # not 'latest' or 'v1.N': the parameter check fails
]


@pytest.mark.parametrize(
    ("policy", "version", "pod_", "expected"),
    VERSION_CASES,
    ids=[f"{case[0]}@{case[1]}" for case in VERSION_CASES],
)
def test_restricted_controls_at_pinned_versions(policy: str, version: str, pod_: dict[str, Any], expected: str) -> None:
    source = POD_SECURITY / policy / "policy.yaml"
    text_ = source.read_text()
    literal = "expression: \"'latest'\""
    if version != "latest":
        assert text_.count(literal) == 1, f"{policy} has no kubernetesVersion parameter"
        text_ = text_.replace(literal, f"expression: \"'{version}'\"")
    policies = build_policy_set(parse_text(text_, str(source)))
    evaluation = run(policies, EvaluationContext(request=request_for_resource(pod_)))
    assert [rule.status for response in evaluation.responses for rule in response.rules] == [Status(expected)]
