"""Writes deploy/base/crds.yaml: the policies.kyverno.io CRDs celvern reads policies from.

Run `python deploy/render_crds.py` after changing the kinds below; the output is committed so that
`kubectl apply -k deploy/overlays/production` works without Python.
"""

from __future__ import annotations

from pathlib import Path

import yaml

KINDS = [
    ("ValidatingPolicy", "validatingpolicies", "Cluster", ["vpol"]),
    ("NamespacedValidatingPolicy", "namespacedvalidatingpolicies", "Namespaced", ["nvpol"]),
    ("MutatingPolicy", "mutatingpolicies", "Cluster", ["mpol"]),
    ("NamespacedMutatingPolicy", "namespacedmutatingpolicies", "Namespaced", ["nmpol"]),
    ("GeneratingPolicy", "generatingpolicies", "Cluster", ["gpol"]),
    ("NamespacedGeneratingPolicy", "namespacedgeneratingpolicies", "Namespaced", ["ngpol"]),
    ("PolicyException", "policyexceptions", "Namespaced", []),
]
OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def crd(kind: str, plural: str, scope: str, short_names: list[str]) -> dict[str, object]:
    versions = ["v1", "v1beta1"] if kind.startswith("Namespaced") else ["v1", "v1beta1", "v1alpha1"]
    names: dict[str, object] = {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()}
    if short_names:
        names["shortNames"] = short_names
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": OPEN,
            "status": OPEN,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.policies.kyverno.io", "labels": {"app.kubernetes.io/part-of": "celvern"}},
        "spec": {
            "group": "policies.kyverno.io",
            "names": names,
            "scope": scope,
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == "v1",
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema},
                }
                for version in versions
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Writes shared sub-schemas in full rather than as YAML anchors, which kubectl users find confusing."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def main() -> None:
    header = (
        "# policies.kyverno.io CustomResourceDefinitions for celvern, written by deploy/render_crds.py.\n"
        "# The spec is kept open (x-kubernetes-preserve-unknown-fields): celvern checks policies itself, with\n"
        "# located errors, when it loads them. v1 is the storage version; v1beta1 and v1alpha1 are served too.\n"
    )
    documents = [crd(*kind) for kind in KINDS]
    text = header + yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, explicit_start=True)
    (Path(__file__).parent / "base" / "crds.yaml").write_text(text)


if __name__ == "__main__":
    main()
