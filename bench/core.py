"""`python -m bench`: the in-process and offline parts of issue 8's benchmark suite, printed and written to
BENCHMARKS.md.

1. The Pod Security ValidatingPolicy set on a 10 KB Pod (compile time, median per request), the compile time of the
   whole bundled library, and the set's expressions next to the pure-Python cel-python package as the naive
   baseline (bench/baseline.py);
2. `celvern apply` of that set over 500 Pods;
3. a 3-policy mutation chain with its final patch;
4. the background generator on 1,000 namespace events (bench/generator.py);
6. scale: 10, 100 and 1,000 non-matching policies loaded next to the 16 (bench/scale.py).
(The numbering is this suite's, as in issue 8 except that the webhook and Checkov comparisons need other tools and
run on their own: `python -m bench.webhook` (wrk) and `python -m bench.offline` (Checkov); each writes its own
section of BENCHMARKS.md.)

Figures are medians over repeated runs after a warm-up, printed with the command that produced them. These
machines are shared and noisy, so a single number means little; compare medians and ratios from the same run.
Targets are reported as pass/short, never asserted.

    python -m bench                # every part; writes the `core` section of BENCHMARKS.md
    python -m bench --evaluations 2000 --apply-runs 5 --no-write
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.baseline import compare
from bench.report import Table, Target, add_write_flag, command_line, machine, section, targets_table, write_section
from engine.evaluation import EvaluationContext
from engine.loader import load_paths, parse_text
from engine.policy_set import build_policy_set, evaluate, run, split_documents
from engine.request import request_for_resource

REPOSITORY = Path(__file__).resolve().parents[1]
POD_SECURITY = REPOSITORY.parent / "shared" / "conformance" / "kyverno-policies" / "pod-security-vpol"
POD_SECURITY_TARGET_MS = 0.3


def pod_security_policy_files() -> list[Path]:
    """The 16 ValidatingPolicies of Kyverno's pod-security-vpol library (not their tests)."""
    return sorted(p for p in POD_SECURITY.glob("*/*/*.yaml") if p.name != "kustomization.yaml")


def make_pod(name: str, *, target_bytes: int = 10_000, privileged: bool = False) -> dict[str, Any]:
    """A realistic Pod of about `target_bytes` of YAML: several containers with env, mounts, probes."""
    containers: list[dict[str, Any]] = []
    index = 0
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": {"app": name, "tier": "web"},
            "annotations": {"owner": "team-a", "description": "benchmark pod " * 4},
        },
        "spec": {
            "containers": containers,
            "volumes": [],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        },
    }
    while len(yaml.safe_dump(pod)) < target_bytes:
        containers.append(
            {
                "name": f"c{index}",
                "image": f"registry.example.com/team-a/app{index}:1.{index}.0",
                "ports": [{"containerPort": 8080 + index, "protocol": "TCP"}],
                "env": [{"name": f"VAR_{index}_{j}", "value": f"value-{j}"} for j in range(8)],
                "volumeMounts": [{"name": f"data{index}", "mountPath": f"/data/{index}", "readOnly": True}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "1", "memory": "1Gi"},
                },
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + index}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": privileged and index == 0,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            }
        )
        pod["spec"]["volumes"].append({"name": f"data{index}", "configMap": {"name": f"cm{index}"}})
        index += 1
    return pod


def bench_evaluation(evaluations: int) -> dict[str, float]:
    documents = load_paths(pod_security_policy_files())
    policies, _ = split_documents(documents)
    started = time.perf_counter()
    policy_set = build_policy_set(policies)
    compile_ms = (time.perf_counter() - started) * 1000
    assert not policy_set.compile_errors, policy_set.compile_errors
    pod = make_pod("bench")
    size = len(yaml.safe_dump(pod))
    context = EvaluationContext(request=request_for_resource(pod))
    for _ in range(50):  # warm-up
        evaluate(policy_set, context)
    samples = []
    for _ in range(evaluations):
        context = EvaluationContext(request=request_for_resource(pod))
        begin = time.perf_counter()
        evaluate(policy_set, context)
        samples.append(time.perf_counter() - begin)
    return {
        "policies": float(policy_set.policy_count),
        "compiled (incl. autogen)": float(len(policy_set.validating)),
        "pod bytes": float(size),
        "compile ms": compile_ms,
        "median ms": statistics.median(samples) * 1000,
        "p95 ms": sorted(samples)[int(0.95 * len(samples)) - 1] * 1000,
    }


LIBRARY = REPOSITORY / "policies"


def bench_library_compile(runs: int = 5) -> dict[str, float]:
    """Compile time of the whole bundled library (every policy.yaml, all three families), with no program cache:
    what `celvern serve` and the controller pay at start and on every policy change."""
    files = sorted(LIBRARY.rglob("policy.yaml"))
    load_samples, compile_samples = [], []
    policy_set = None
    for _ in range(runs + 1):  # the first run is a warm-up (imports, schema tables)
        started = time.perf_counter()
        policies, _ = split_documents(load_paths(files))
        loaded = time.perf_counter()
        policy_set = build_policy_set(policies)
        compiled = time.perf_counter()
        load_samples.append(loaded - started)
        compile_samples.append(compiled - loaded)
    assert policy_set is not None and not policy_set.compile_errors, policy_set and policy_set.compile_errors
    compile_ms = statistics.median(compile_samples[1:]) * 1000
    return {
        "policy files": float(len(files)),
        "policies": float(policy_set.policy_count),
        "compiled (incl. autogen)": float(
            len(policy_set.validating) + len(policy_set.mutating) + len(policy_set.generating)
        ),
        "YAML load ms": statistics.median(load_samples[1:]) * 1000,
        "compile ms": compile_ms,
        "compile ms per policy": compile_ms / policy_set.policy_count,
    }


MUTATION_CHAIN = [
    (
        "always-pull-images",
        "Object{spec: Object.spec{containers: object.spec.containers.map(c, "
        'Object.spec.containers{name: c.name, imagePullPolicy: "Always"})}}',
    ),
    (
        "default-run-as-non-root",
        "Object{spec: Object.spec{securityContext: Object.spec.securityContext{"
        "runAsNonRoot: object.spec.?securityContext.?runAsNonRoot.orValue(true)}}}",
    ),
    (
        "add-team-label",
        "Object{metadata: Object.metadata{labels: {'team': object.metadata.?labels.?team.orValue('unknown')}}}",
    ),
]


def mutation_chain_policies() -> str:
    documents = []
    for name, expression in MUTATION_CHAIN:
        documents.append(
            {
                "apiVersion": "policies.kyverno.io/v1",
                "kind": "MutatingPolicy",
                "metadata": {"name": name},
                "spec": {
                    "matchConstraints": {
                        "resourceRules": [
                            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                        ]
                    },
                    "mutations": [
                        {"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": expression}}
                    ],
                },
            }
        )
    return yaml.safe_dump_all(documents)


def bench_mutation(evaluations: int) -> dict[str, float]:
    policy_set = build_policy_set(split_documents(parse_text(mutation_chain_policies(), "<bench>"))[0])
    assert not policy_set.compile_errors, policy_set.compile_errors
    pod = make_pod("bench", target_bytes=12_300)  # about 10 KB once the security contexts are removed
    pod["spec"].pop("securityContext")
    for container in pod["spec"]["containers"]:
        container.pop("securityContext")

    def once() -> int:
        evaluation = run(policy_set, EvaluationContext(request=request_for_resource(pod)))
        return len(evaluation.patch())

    operations = once()
    for _ in range(50):  # warm-up (schema loading, caches)
        once()
    samples = []
    for _ in range(evaluations):
        begin = time.perf_counter()
        once()
        samples.append(time.perf_counter() - begin)
    return {
        "policies in chain": float(len(MUTATION_CHAIN)),
        "pod bytes": float(len(yaml.safe_dump(pod))),
        "patch operations": float(operations),
        "median ms": statistics.median(samples) * 1000,
        "p95 ms": sorted(samples)[int(0.95 * len(samples)) - 1] * 1000,
    }


def bench_apply(pods: int, runs: int) -> tuple[dict[str, float], str]:
    directory = Path(tempfile.mkdtemp(prefix="celvern-bench-"))
    try:
        documents = [make_pod(f"pod-{i}", target_bytes=2_000, privileged=(i % 5 == 0)) for i in range(pods)]
        (directory / "pods.yaml").write_text(yaml.safe_dump_all(documents))
        policy_dir = directory / "policies"
        policy_dir.mkdir()
        for path in pod_security_policy_files():
            shutil.copy(path, policy_dir / f"{path.parent.name}.yaml")
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "apply",
            str(policy_dir),
            "-r",
            str(directory / "pods.yaml"),
        ]
        if shutil.which("taskset"):
            command = ["taskset", "-c", "0", *command]  # one core, as the target says
        samples = []
        for run in range(runs + 1):
            begin = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY, check=False)
            elapsed = time.perf_counter() - begin
            if completed.returncode not in (0, 1):
                raise SystemExit(f"celvern apply failed:\n{completed.stderr}")
            if run:  # the first run is warm-up (file cache, bytecode)
                samples.append(elapsed)
        summary = completed.stdout.strip().splitlines()[-1]
        return {
            "pods": float(pods),
            "runs": float(runs),
            "median s": statistics.median(samples),
            "min s": min(samples),
        }, summary
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _table(title: str, values: dict[str, float], notes: list[str] | None = None) -> Table:
    table = Table(title, ("measure", "value"), notes=notes or [])
    for key, value in values.items():
        table.add(key, int(value) if value.is_integer() and "ms" not in key and " s" not in key else value)
    return table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--evaluations", type=int, default=2000)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--apply-runs", type=int, default=5)
    parser.add_argument("--celpy-samples", type=int, default=15, help="samples per expression under cel-python")
    parser.add_argument("--scale-rounds", type=int, default=30, help="interleaved timing blocks per set in part 6")
    add_write_flag(parser)
    args = parser.parse_args(argv)
    if not POD_SECURITY.is_dir():
        print(f"pod-security policies not found at {POD_SECURITY}", file=sys.stderr)
        return 2
    facts = machine()
    print(", ".join(f"{key}: {value}" for key, value in facts.items()))
    tables: list[Table] = []
    targets: list[Target] = []

    def show(table: Table) -> None:
        tables.append(table)
        print(table.text(), flush=True)

    evaluation = bench_evaluation(args.evaluations)
    show(_table("1a. Pod Security set (16 ValidatingPolicies + autogen) on one ~10 KB Pod, in-process", evaluation))
    targets.append(
        Target(
            f"Pod Security set on a 10 KB Pod: < {POD_SECURITY_TARGET_MS} ms in-process",
            f"{evaluation['median ms']:.3f} ms median (p95 {evaluation['p95 ms']:.3f})",
            evaluation["median ms"] < POD_SECURITY_TARGET_MS,
        )
    )
    per_expression, summary = compare(make_pod("bench"), pod_security_policy_files(), args.celpy_samples)
    show(per_expression)
    show(summary)
    show(
        _table(
            "1d. Compile time of the whole bundled library (policies/), no program cache, in-process",
            bench_library_compile(),
            ["medians of 5 runs after a warm-up"],
        )
    )
    apply_result, apply_summary = bench_apply(args.pods, args.apply_runs)
    show(
        _table(
            f"2. celvern apply of the Pod Security set over {args.pods} Pods (subprocess, one core)",
            apply_result,
            [f"apply summary line: {apply_summary}", "the first run is a warm-up and not counted"],
        )
    )
    show(
        _table(
            "3. A 3-policy ApplyConfiguration chain on one ~10 KB Pod, with the final RFC 6902 patch, in-process",
            bench_mutation(args.evaluations),
        )
    )
    from bench.generator import bench_generator
    from bench.scale import bench_scale

    show(
        _table(
            "4. Background generator: namespace events to default-deny NetworkPolicies, in-memory cluster",
            bench_generator(),
        )
    )
    scale_table, scale_targets = bench_scale(args.scale_rounds)
    show(scale_table)
    targets.extend(scale_targets)
    show(targets_table(targets))
    if not args.no_write:
        command = command_line("python -m bench", argv)
        body = section("Core: `python -m bench`", command, tables, {"note": "parts 1-4 and 6 of issue 8"})
        write_section("core", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
