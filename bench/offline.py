"""Offline scanning next to Checkov: `celvern apply` of the whole validating library against `checkov -d DIR`.

Both tools get the same generated manifests (Pods, Deployments and Services, one in five violating something) in one
directory, run as subprocesses on the same machine one after the other, several times each (the first run of each
is a warm-up and not counted). Wall time and peak resident memory (of the process and its children, from
`wait4`) are reported as medians, with the ratios. Checkov is not a dependency of celvern: install it anywhere
(`python -m venv /tmp/checkov && /tmp/checkov/bin/pip install checkov`) and pass `--checkov /tmp/checkov/bin/checkov`,
or have `checkov` on PATH.

    python -m bench.offline                      # 500 manifests, 3 runs each
    python -m bench.offline --manifests 5000 --runs 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.core import make_pod

REPOSITORY = Path(__file__).resolve().parents[1]
LIBRARY = REPOSITORY / "policies" / "validating"


def manifests(count: int) -> list[dict[str, Any]]:
    """`count` manifests: Pods, Deployments and Services in turn; every fifth one violates something."""
    documents: list[dict[str, Any]] = []
    for index in range(count):
        bad = index % 5 == 0
        pod = make_pod(f"app-{index}", target_bytes=2_000, privileged=bad)
        if index % 3 == 0:
            documents.append(pod)
        elif index % 3 == 1:
            documents.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": f"app-{index}", "namespace": "team-a", "labels": {"app": f"app-{index}"}},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": {"app": f"app-{index}"}},
                        "template": {"metadata": {"labels": {"app": f"app-{index}"}}, "spec": pod["spec"]},
                    },
                }
            )
        else:
            documents.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": f"svc-{index}", "namespace": "team-a"},
                    "spec": {
                        "type": "NodePort" if bad else "ClusterIP",
                        "selector": {"app": f"app-{index}"},
                        "ports": [{"port": 80, "targetPort": 8080}],
                    },
                }
            )
    return documents


def measure(command: list[str], runs: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """Median wall seconds and peak RSS (MiB) over `runs` runs after one warm-up."""
    walls: list[float] = []
    peaks: list[float] = []
    for run in range(runs + 1):
        begin = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPOSITORY, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - begin
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):  # both tools exit 1 when they find violations
            raise SystemExit(f"{command[0]} exited {code}:\n{stderr[-2000:]}")
        if run:
            walls.append(elapsed)
            peaks.append(usage.ru_maxrss / 1024)  # kilobytes on Linux
    return {"wall s": statistics.median(walls), "peak MiB": statistics.median(peaks)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.offline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifests", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkov", default=shutil.which("checkov"), help="checkov executable")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="run celvern without its compiled-program cache (by default the warm-up run fills it, as a second CI "
        "run on the same machine would find it)",
    )
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="celvern-offline-bench-"))
    try:
        documents = manifests(args.manifests)
        (directory / "manifests").mkdir()
        for index, document in enumerate(documents):  # one file per manifest, as repositories hold them
            path = directory / "manifests" / f"{index:05d}-{document['kind'].lower()}.yaml"
            path.write_text(yaml.safe_dump(document))
        # The library as users switch it on: every policy.yaml (bundles and test instances are left out).
        policies = sorted(LIBRARY.rglob("policy.yaml"))
        print(
            f"machine: {os.cpu_count()} cpus; {len(documents)} manifests; celvern: {len(policies)} validating "
            f"library policies; {args.runs} runs each after a warm-up; celvern program cache "
            f"{'off' if args.no_cache else 'on (filled by the warm-up)'}"
        )
        manifest_dir = directory / "manifests"
        celvern = [sys.executable, "-m", "cli.main", "apply", *map(str, policies), "-r", str(manifest_dir)]
        environment = dict(os.environ)
        environment["CELVERN_CACHE_DIR"] = str(directory / "cache")
        if args.no_cache:
            environment["CELVERN_NO_CACHE"] = "1"
        results = {"celvern apply": measure(celvern, args.runs, environment)}
        if args.checkov:
            checkov = [args.checkov, "-d", str(manifest_dir), "--framework", "kubernetes", "--quiet", "--compact"]
            results["checkov"] = measure(checkov, args.runs)
        else:
            print("checkov not found: pass --checkov PATH to compare (see the module docstring)")
        print(f"{'tool':<15} {'wall s':>8} {'peak MiB':>9}")
        for name, result in results.items():
            print(f"{name:<15} {result['wall s']:>8.2f} {result['peak MiB']:>9.1f}")
        if "checkov" in results:
            ours, theirs = results["celvern apply"], results["checkov"]
            print(
                f"celvern is {theirs['wall s'] / ours['wall s']:.1f}x faster and uses "
                f"{ours['peak MiB'] / theirs['peak MiB']:.2f}x Checkov's peak memory (targets: >= 10x, <= 0.5x)"
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
