"""`python -m bench.memory`: memory kept per evaluation, i.e. what a long-running worker accumulates.

Why it exists: cel-expr-python 0.1.3 keeps a reference to every argument and every result of a call of a
Python-implemented CEL function (celvern's `image`, `quantity`, `semver`, ... libraries), so those objects are never
freed; built-in CEL functions and plain field access do not leak. A webhook or controller process therefore grows
with the number of such calls it evaluates, which is why `celvern serve --max-worker-memory` recycles workers. This
measures the growth of the resident set per evaluation, after a warm-up, for:

1. one call of a Python-implemented function (`quantity('500m')`) against a built-in (`size('500m')`);
2. the Pod Security set and the whole validating library on the ~10 KB Pod of part 1 of `python -m bench`.

    python -m bench.memory              # writes the `memory` section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from pathlib import Path

from bench.core import make_pod, pod_security_policy_files
from bench.report import Table, add_write_flag, command_line, section, write_section
from cli.serve_command import resident_bytes
from engine.cel.environment import Program, validating_environment
from engine.evaluation import EvaluationContext
from engine.loader import load_paths
from engine.policy_set import PolicySet, build_policy_set, run, split_documents
from engine.request import request_for_resource

REPOSITORY = Path(__file__).resolve().parents[1]
LIBRARY = REPOSITORY / "policies" / "validating"


def growth_per_call(work: Callable[[], object], calls: int) -> float:
    """Resident bytes gained per call of `work`, after a warm-up and a full collection."""
    for _ in range(min(calls, 200)):
        work()
    gc.collect()
    before = resident_bytes()
    for _ in range(calls):
        work()
    gc.collect()
    return (resident_bytes() - before) / calls


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100_000, help="calls per function measurement")
    parser.add_argument("--reviews", type=int, default=1_000, help="evaluations per policy-set measurement")
    add_write_flag(parser)
    args = parser.parse_args(argv)
    if not resident_bytes():
        print("needs /proc/self/statm (Linux)", file=sys.stderr)
        return 2
    table = Table("Memory kept per evaluation (resident set growth after a warm-up)", ("what", "bytes kept per call"))
    environment = validating_environment()
    for label, text in (
        ("built-in function: size('500m') == 4", "size('500m') == 4"),
        ("Python-implemented function: quantity('500m').isInteger()", "quantity('500m').isInteger()"),
    ):
        program = environment.compile(text, path="bench")

        def call(program: Program = program) -> object:
            return program.evaluate(environment.activation({}))

        table.add(label, growth_per_call(call, args.calls))
    pod = make_pod("bench")
    for label, files in (
        ("Pod Security set (16 policies) on the ~10 KB Pod", pod_security_policy_files()),
        ("whole validating library on the ~10 KB Pod", sorted(LIBRARY.rglob("policy.yaml"))),
    ):
        policy_set = build_policy_set(split_documents(load_paths(files))[0])

        def review(policy_set: PolicySet = policy_set) -> object:
            return run(policy_set, EvaluationContext(request=request_for_resource(pod)), unmatched=False)

        table.add(label, growth_per_call(review, args.reviews))
    table.notes.append(
        "cel-expr-python 0.1.3 keeps one reference to each argument and result of a Python-implemented function; "
        "`celvern serve --max-worker-memory` recycles workers to bound it"
    )
    print(table.text())
    if not args.no_write:
        write_section(
            "memory", section("Memory: `python -m bench.memory`", command_line("python -m bench.memory", argv), [table])
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
