"""Part 6, scale: what loading many policies that do not match a request costs that request, in time and memory.

Issue 8's target: with 1,000 policies loaded and a request matching 16 of them, evaluation stays under 2x the
latency of those 16 loaded alone (matching is indexed by request shape, so it should grow sub-linearly). The 16 are
the Pod Security ValidatingPolicies and the request is a CREATE of the ~10 KB benchmark Pod; the others are
generated here, 10, 100 or 1,000 of them, each a little different and none matching that request: policies for
ConfigMaps, Services, Secrets, Deployments and a custom group, and policies for Pods that are left out by their
operations (DELETE or UPDATE only) or by a namespaceSelector the Pod's namespace does not satisfy (those cannot be
decided by request shape, so they are matched per request).

Time is the median per request of `engine.policy_set.run`, in-process, with `unmatched=False` (the admission path:
only matching policies answer) and `unmatched=True` (the CLI path: every policy answers). The sets are timed in
interleaved blocks, so drift on a noisy machine hits all of them alike. Memory is the resident-set growth from
generating and compiling a set and evaluating one request, each set in a fresh subprocess (`--memory-of N`), since
most of it is the CEL runtime's C++ heap, which tracemalloc does not see.

    python -m bench.scale                 # 16 alone, then + 10, 100, 1,000 others
    python -m bench.scale --rounds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.core import REPOSITORY, make_pod, pod_security_policy_files
from bench.report import Table, Target
from engine.evaluation import EvaluationContext
from engine.loader import Document, load_paths
from engine.matching import NamespaceLabels
from engine.policy_set import PolicySet, build_policy_set, run, split_documents
from engine.request import request_for_resource

OTHERS = (0, 10, 100, 1000)
"""Non-matching policies loaded next to the 16 Pod Security policies."""
NAMESPACE = NamespaceLabels({"kubernetes.io/metadata.name": "team-a", "team": "a"})
TARGET_RATIO = 2.0


def _rule(group: str, resource: str, operations: Sequence[str] = ("CREATE", "UPDATE")) -> dict[str, Any]:
    return {"apiGroups": [group], "apiVersions": ["*"], "operations": list(operations), "resources": [resource]}


def other_policy(index: int) -> dict[str, Any]:
    """The `index`-th generated policy; none of them matches a CREATE of a Pod in namespace team-a."""
    variant = index % 8
    constraints: dict[str, Any]
    if variant == 0:
        constraints = {"resourceRules": [_rule("", "configmaps")]}
        expression = f"size(object.?data.orValue({{}})) <= {100 + index}"
    elif variant == 1:
        constraints = {"resourceRules": [_rule("", "services")]}
        expression = f"object.spec.?type.orValue('ClusterIP') != 'NodePort' || object.metadata.name == 'edge-{index}'"
    elif variant == 2:
        constraints = {"resourceRules": [_rule(f"team{index}.example.com", "widgets")]}
        expression = f"object.spec.?replicas.orValue(1) <= {10 + index % 50}"
    elif variant == 3:
        constraints = {"resourceRules": [_rule("apps", "deployments")]}
        expression = f"object.spec.?replicas.orValue(1) <= {20 + index % 50}"
    elif variant == 4:
        constraints = {"resourceRules": [_rule("", "secrets")]}
        expression = f"object.?type.orValue('Opaque') != 'kubernetes.io/dockercfg-{index}'"
    elif variant == 5:  # Pods, but only their deletion
        constraints = {"resourceRules": [_rule("", "pods", ("DELETE",))]}
        expression = f"oldObject.metadata.name != 'protected-{index}'"
    elif variant == 6:  # Pods, but only in namespaces labelled for it (decided per request)
        constraints = {
            "resourceRules": [_rule("", "pods")],
            "namespaceSelector": {"matchLabels": {"celvern.example.com/tier": f"restricted-{index}"}},
        }
        expression = f"object.spec.containers.all(c, !c.image.startsWith('blocked-{index}/'))"
    else:  # Pods, but only updates
        constraints = {"resourceRules": [_rule("", "pods", ("UPDATE",))]}
        expression = f"object.metadata.?labels.?app.orValue('') != 'frozen-{index}'"
    return {
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": f"scale-{index:04d}"},
        "spec": {
            "validationActions": ["Deny"],
            "matchConstraints": constraints,
            "validations": [{"expression": expression, "message": f"generated policy {index} refused it"}],
        },
    }


def policy_set(others: int) -> PolicySet:
    documents = split_documents(load_paths(pod_security_policy_files()))[0]
    documents += [Document(other_policy(i), "<bench.scale>", i) for i in range(others)]
    built = build_policy_set(documents)
    assert not built.compile_errors, built.compile_errors[:3]
    return built


def _context(pod: dict[str, Any]) -> EvaluationContext:
    return EvaluationContext(request=request_for_resource(pod), namespace=NAMESPACE)


def _answered(built: PolicySet, pod: dict[str, Any], unmatched: bool) -> tuple[int, int]:
    """(responses, responses with a rule result) for one request."""
    responses = run(built, _context(pod), unmatched=unmatched).responses
    return len(responses), sum(1 for response in responses if response.rules)


def time_sets(
    sets: dict[int, PolicySet], pod: dict[str, Any], unmatched: bool, rounds: int, block: int
) -> dict[int, float]:
    """Median seconds per request for each set, timed in interleaved blocks of `block` requests."""
    for built in sets.values():  # warm-up: plans per request shape, fused programs, caches
        for _ in range(20):
            run(built, _context(pod), unmatched=unmatched)
    samples: dict[int, list[float]] = {others: [] for others in sets}
    order = list(sets)
    for index in range(rounds):
        for others in order[index % len(order) :] + order[: index % len(order)]:
            built = sets[others]
            for _ in range(block):
                context = _context(pod)
                begin = time.perf_counter()
                run(built, context, unmatched=unmatched)
                samples[others].append(time.perf_counter() - begin)
    return {others: statistics.median(values) for others, values in samples.items()}


def _rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_of(others: int) -> dict[str, float]:
    """In this (fresh) process: resident growth and time from nothing to a built set that has answered a request."""
    pod = make_pod("bench")
    _context(pod)  # imports and caches that any set needs
    before = _rss_kib()
    begin = time.perf_counter()
    built = policy_set(others)
    build_s = time.perf_counter() - begin
    run(built, _context(pod), unmatched=False)
    return {
        "rss_mib": (_rss_kib() - before) / 1024,
        "build_s": build_s,
        "compiled": float(len(built.validating)),
    }


def _measure_memory(others: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.scale", "--memory-of", str(others)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"bench.scale --memory-of {others} failed:\n{completed.stderr[-2000:]}")
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def bench_scale(rounds: int = 30, block: int = 20) -> tuple[Table, list[Target]]:
    pod = make_pod("bench")
    sets = {others: policy_set(others) for others in OTHERS}
    admission = time_sets(sets, pod, unmatched=False, rounds=rounds, block=block)
    cli = time_sets(sets, pod, unmatched=True, rounds=rounds, block=block)
    table = Table(
        "6. Scale: the 16 Pod Security policies plus N that do not match the Pod's CREATE, in-process",
        (
            "loaded",
            "compiled",
            "with rules",
            "admission ms",
            "x 16",
            "cli ms",
            "x 16",
            "build s",
            "RSS MiB",
        ),
    )
    for others, built in sets.items():
        answered = _answered(built, pod, unmatched=False)[1]
        memory = _measure_memory(others)
        table.add(
            f"16 + {others:,}" if others else "16 alone",
            len(built.validating),
            answered,
            admission[others] * 1000,
            admission[others] / admission[0],
            cli[others] * 1000,
            cli[others] / cli[0],
            memory["build_s"],
            memory["rss_mib"],
        )
    table.notes.extend(
        [
            "compiled: policies incl. autogen variants; with rules: responses carrying a rule result (should be 16)",
            "admission: run(..., unmatched=False); cli: run(..., unmatched=True) (every policy answers); medians "
            f"per request over {rounds} interleaved blocks of {block}",
            "build s and RSS MiB: generating + compiling the set and answering one request, in a fresh subprocess",
        ]
    )
    largest = OTHERS[-1]
    ratio = admission[largest] / admission[0]
    target = Target(
        f"{largest:,} policies loaded, 16 matching: < {TARGET_RATIO:g}x the latency of the 16 alone",
        f"{ratio:.2f}x ({admission[largest] * 1000:.3f} vs {admission[0] * 1000:.3f} ms, admission path; "
        f"16 + {largest:,} loaded)",
        ratio < TARGET_RATIO,
    )
    return table, [target]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--memory-of", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of is not None:
        print(json.dumps(memory_of(args.memory_of)))
        return 0
    table, targets = bench_scale(args.rounds, args.block)
    print(table.text())
    for target in targets:
        print(f"  target: {target.goal}: {target.measured}: {target.verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
