"""Every Kyverno CEL library (kyverno/sdk `extensions/cel/libs`), gathered for the environment.

Kyverno adds these libraries on top of Kubernetes' CEL libraries in every policy type. They live in
several modules, by what they need: `kyverno_data` (pure functions), `kyverno_x509`, `image` (reference
parsing) and `kyverno_cluster` (calls served by per-evaluation services). The environment registers
`LIBRARIES`; the generator and image-verification libraries, which exist only in some policy types, are
not part of this set.
"""

from __future__ import annotations

from engine.cel.libraries import Library, image, kyverno_cluster, kyverno_data, kyverno_x509

LIBRARIES: tuple[Library, ...] = (
    *kyverno_data.LIBRARIES,
    kyverno_x509.LIBRARY,
    image.LIBRARY,
    *kyverno_cluster.LIBRARIES,
)
"""The Kyverno libraries, one `Library` per Kyverno library (json, yaml, hash, ..., resource, http, ...)."""

__all__ = ["LIBRARIES"]
