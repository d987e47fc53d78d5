"""Offline scanning next to Checkov: `celvern apply` of the whole validating library against `checkov -d DIR`.

Both tools get the same generated manifests (Pods, Deployments and Services, one in five violating something) in one
directory, run as subprocesses on the same machine one after the other, several times each (the first run of each
is a warm-up and not counted). Wall time and peak resident memory (of the largest single process among the tool and
its children: `wait4`'s ru_maxrss, so with `--concurrency` each worker's own is not added) are reported as medians,
with the ratios. Checkov is not a dependency of celvern: install it anywhere
(`python -m venv /tmp/checkov && /tmp/checkov/bin/pip install checkov`) and pass `--checkov /tmp/checkov/bin/checkov`,
or have `checkov` on PATH.

    python -m bench.offline                      # 500 manifests, 3 runs each; celvern also with --concurrency 2
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
from bench.report import Table, Target, add_write_flag, command_line, section, targets_table, write_section

REPOSITORY = Path(__file__).resolve().parents[1]
LIBRARY = REPOSITORY / "policies" / "validating"
SPEED_TARGET = 10.0
MEMORY_TARGET = 0.5


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
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[2],
        help="also run `celvern apply --concurrency N` for each N (scaling on this machine's cores); none to skip",
    )
    add_write_flag(parser)
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
        setting = (
            f"{len(documents)} manifests; celvern: {len(policies)} validating library policies; {args.runs} runs "
            f"each after a warm-up; celvern program cache {'off' if args.no_cache else 'on (filled by the warm-up)'}"
        )
        print(f"machine: {os.cpu_count()} cpus; {setting}")
        manifest_dir = directory / "manifests"
        celvern = [sys.executable, "-m", "cli.main", "apply", *map(str, policies), "-r", str(manifest_dir)]
        environment = dict(os.environ)
        environment["CELVERN_CACHE_DIR"] = str(directory / "cache")
        if args.no_cache:
            environment["CELVERN_NO_CACHE"] = "1"
        results = {"celvern apply": measure(celvern, args.runs, environment)}
        for workers in args.concurrency:
            results[f"celvern apply -c {workers}"] = measure(
                [*celvern, "--concurrency", str(workers)], args.runs, environment
            )
        if args.checkov:
            checkov = [args.checkov, "-d", str(manifest_dir), "--framework", "kubernetes", "--quiet", "--compact"]
            results["checkov"] = measure(checkov, args.runs)
        else:
            print("checkov not found: pass --checkov PATH to compare (see the module docstring)")
        table = Table(
            f"Offline scan of {len(documents):,} manifests: celvern apply ({len(policies)} library policies) vs "
            "checkov -d --framework kubernetes",
            ("tool", "wall s", "peak MiB", "speed vs checkov", "memory vs checkov"),
        )
        theirs = results.get("checkov")
        for name, result in results.items():
            table.add(
                name,
                result["wall s"],
                result["peak MiB"],
                theirs["wall s"] / result["wall s"] if theirs else None,
                result["peak MiB"] / theirs["peak MiB"] if theirs else None,
            )
        table.notes.append(
            f"medians of {args.runs} runs after a warm-up; peak RSS of the largest single process "
            "(wait4 ru_maxrss; workers not added); "
            "speed vs checkov = checkov wall / tool wall; memory vs checkov = tool peak / checkov peak"
        )
        ours = results["celvern apply"]
        targets = [
            Target(
                f"offline apply of the full library: >= {SPEED_TARGET:g}x Checkov's speed on the same manifests",
                f"{theirs['wall s'] / ours['wall s']:.1f}x" if theirs else "checkov not run",
                theirs["wall s"] / ours["wall s"] >= SPEED_TARGET if theirs else None,
            ),
            Target(
                f"offline apply of the full library: <= {MEMORY_TARGET:g}x Checkov's peak memory",
                f"{ours['peak MiB'] / theirs['peak MiB']:.2f}x" if theirs else "checkov not run",
                ours["peak MiB"] / theirs["peak MiB"] <= MEMORY_TARGET if theirs else None,
            ),
        ]
        print(table.text())
        summary = targets_table(targets)
        print(summary.text())
        if not args.no_write:
            body = section(
                "Offline: `python -m bench.offline`",
                command_line("python -m bench.offline", argv),
                [table, summary],
                {"setting": setting},
            )
            write_section("offline", body)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
