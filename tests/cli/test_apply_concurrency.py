"""`celvern apply --concurrency N`: the same output, byte for byte, and the same exit codes and errors as a
sequential run; plus the pieces of `cli.parallel` (worker count, chunking, what travels between processes)."""

from __future__ import annotations

import os
import pickle
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import parallel, suite
from cli.main import DEBUG_VARIABLE, celvern
from cli.parallel import Failure, ParallelEvaluation, WorkerError, from_plain, to_plain
from engine.errors import LoadError, Location
from engine.evaluation import EvaluationContext
from engine.loader import load_paths
from engine.policy_set import evaluate
from engine.results import PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status

REPOSITORY = Path(__file__).parents[2]
EXAMPLES = REPOSITORY / "examples"
POD_SECURITY = REPOSITORY / "policies" / "validating" / "pod-security"
PRIVILEGED_POLICY = POD_SECURITY / "disallow-privileged-containers" / "policy.yaml"
FIXTURES = Path(__file__).parent / "fixtures"
APPLY = FIXTURES / "apply"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(celvern, ["apply", *map(str, args)])


def _timestamps_zeroed(text: str) -> str:
    """Reports carry the time they were made; two runs may straddle a second."""
    return re.sub(r'("?seconds"?: )\d+', r"\g<1>0", text)


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Worker counts of the parallel runs `celvern apply` starts; even a few subjects get workers."""
    started: list[int] = []

    class Spy(ParallelEvaluation):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(kwargs["workers"])

    monkeypatch.setattr("cli.apply_command.ParallelEvaluation", Spy)
    monkeypatch.setattr(parallel, "MIN_SUBJECTS_PER_WORKER", 1)
    return started


def _pods(count: int, *, privileged_every: int = 0) -> str:
    """`count` Pods in three namespaces (their Namespaces last), every `privileged_every`-th one privileged."""
    documents = []
    for index in range(count):
        privileged = bool(privileged_every) and index % privileged_every == 0
        context = "{privileged: true}" if privileged else "{runAsNonRoot: true, allowPrivilegeEscalation: false}"
        documents.append(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{index}, namespace: team-{index % 3}}}\n"
            f"spec: {{containers: [{{name: app, image: 'registry.example/app:{index}',"
            f" securityContext: {context}}}]}}\n"
        )
    documents.extend(
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: team-{n}, labels: {{team: t{n}}}}}\n" for n in range(3)
    )
    return "---\n".join(documents)


@dataclass(frozen=True)
class Dataset:
    id: str
    policies: tuple[Path, ...]
    exit_code: int
    pods: int = 0
    """Generated Pods (with `privileged_every`); 0: the bundled example resources."""
    privileged_every: int = 0

    def resources(self, directory: Path) -> Path:
        if not self.pods:
            return EXAMPLES / "resources"
        path = directory / "pods.yaml"
        path.write_text(_pods(self.pods, privileged_every=self.privileged_every))
        return path


DATASETS = [
    Dataset("examples", (EXAMPLES / "policies",), 1),
    Dataset("60-pods-pod-security", (POD_SECURITY,), 1, pods=60, privileged_every=7),
    Dataset("60-clean-pods", (PRIVILEGED_POLICY,), 0, pods=60),
]
OUTPUTS = ["text", "table", "json", "yaml"]


def _compare(args: tuple[str | Path, ...], forks: list[int]) -> tuple[Result, Result]:
    sequential = run(*args, "--concurrency", "1")
    assert not forks
    concurrent = run(*args, "--concurrency", "2")
    assert forks == [2], "the run with --concurrency 2 was sequential"
    return sequential, concurrent


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("dataset", DATASETS, ids=[d.id for d in DATASETS])
def test_two_workers_print_what_one_does(dataset: Dataset, output: str, forks: list[int], tmp_path: Path) -> None:
    sequential, concurrent = _compare((*dataset.policies, "-r", dataset.resources(tmp_path), "-o", output), forks)
    assert concurrent.exit_code == sequential.exit_code == dataset.exit_code
    assert _timestamps_zeroed(concurrent.stdout) == _timestamps_zeroed(sequential.stdout)
    assert concurrent.stderr == sequential.stderr


def test_output_dir_holds_the_same_files(forks: list[int], tmp_path: Path) -> None:
    args = (EXAMPLES / "policies", "-r", EXAMPLES / "resources", "--output-dir")
    sequential, concurrent = _compare((*args, tmp_path / "one"), forks)
    run(*args, tmp_path / "two", "--concurrency", "2")
    assert concurrent.stderr.replace("/two/", "/one/") == sequential.stderr
    one = {path.name: path.read_bytes() for path in (tmp_path / "one").iterdir()}
    two = {path.name: path.read_bytes() for path in (tmp_path / "two").iterdir()}
    assert one and any(name.endswith("-mutated.yaml") for name in one)
    assert any(name.endswith("-generated.yaml") for name in one)
    assert two == one


BASIC = (APPLY / "policies.yaml", "-r", APPLY / "resources.yaml")
"""Two resources: one per worker."""
FIXTURE_CASES = {
    "values-and-userinfo": ((*BASIC, "-f", APPLY / "values.yaml", "-u", APPLY / "userinfo.yaml"), 0),
    "operation-delete": ((*BASIC, "--operation", "DELETE", "-f", APPLY / "values.yaml"), 1),
    "exception": ((*BASIC, "-e", APPLY / "exception.yaml"), 0),
    "unsupported-kind-note": ((*BASIC, APPLY / "deleting.yaml"), 1),
    "warn-exit-code": ((APPLY / "unscored.yaml", *BASIC[1:], "--warn-exit-code", "3"), 3),
    "context-file": ((APPLY / "context-policy.yaml", *BASIC[1:], "--context-file", APPLY / "context.yaml"), 0),
    "json-payloads": (
        (APPLY / "json-policy.yaml", "--json", APPLY / "payload.json", "--json", APPLY / "payload.json"),
        1,
    ),
    "mutating": ((APPLY / "mutating.yaml", *BASIC[1:]), 0),
}
"""Arguments and exit code of runs over the CLI fixtures."""


@pytest.mark.parametrize(("args", "exit_code"), FIXTURE_CASES.values(), ids=FIXTURE_CASES.keys())
def test_inputs_reach_the_workers(args: tuple[str | Path, ...], exit_code: int, forks: list[int]) -> None:
    sequential, concurrent = _compare(args, forks)
    assert concurrent.exit_code == sequential.exit_code == exit_code
    assert concurrent.stdout == sequential.stdout
    assert concurrent.stderr == sequential.stderr


@pytest.mark.parametrize(
    ("extra", "exit_code"),
    [
        pytest.param(("--warn-exit-code", "3"), 1, id="fail-beats-warn-exit-code"),
        pytest.param(("--audit-warn",), 1, id="audit-warn"),
    ],
)
def test_exit_codes_match(extra: tuple[str, ...], exit_code: int, forks: list[int], tmp_path: Path) -> None:
    resources = DATASETS[1].resources(tmp_path)
    sequential, concurrent = _compare((POD_SECURITY, "-r", resources, *extra), forks)
    assert concurrent.exit_code == sequential.exit_code == exit_code
    assert concurrent.stdout == sequential.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("-1", "-1 is not in the range x>=0", id="negative"),
        pytest.param("two", "'two' is not a valid integer", id="not-a-number"),
    ],
)
def test_invalid_concurrency_is_a_usage_error(value: str, message: str) -> None:
    result = run(EXAMPLES / "policies", "-r", EXAMPLES / "resources", "--concurrency", value)
    assert result.exit_code == 2
    assert "Invalid value for '--concurrency'" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(FIXTURES / "errors" / "bad-yaml.yaml", id="bad-yaml"),
        pytest.param(FIXTURES / "errors" / "schema-error.yaml", id="schema-error"),
        pytest.param(FIXTURES / "errors" / "compile-error.yaml", id="compile-error"),
        pytest.param(APPLY / "nope.yaml", id="missing-file"),
    ],
)
def test_policy_that_does_not_load_fails_as_sequentially(policy: Path, tmp_path: Path) -> None:
    resources = DATASETS[1].resources(tmp_path)
    sequential = run(policy, "-r", resources, "--concurrency", "1")
    concurrent = run(policy, "-r", resources, "--concurrency", "2")
    assert concurrent.exit_code == sequential.exit_code == 2
    assert concurrent.stderr == sequential.stderr
    assert concurrent.stdout == sequential.stdout


def _failing_on(name: str, error: Exception) -> Callable[..., list[PolicyResponse]]:
    def failing(policy_set: Any, context: EvaluationContext, **kwargs: Any) -> list[PolicyResponse]:
        if context.resource.name == name:
            raise error
        return evaluate(policy_set, context, **kwargs)

    return failing


@pytest.mark.parametrize(
    ("error", "exit_code", "stderr"),
    [
        pytest.param(
            LoadError("cannot read the image list", Location("images.yaml", 4)),
            2,
            "images.yaml:4: cannot read the image list\n",
            id="celvern-error",
        ),
        pytest.param(ZeroDivisionError("boom"), 2, "internal error: ZeroDivisionError: boom\n", id="unexpected"),
    ],
)
def test_error_in_a_worker_reads_as_sequentially(
    error: Exception, exit_code: int, stderr: str, forks: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    monkeypatch.setattr("cli.suite.evaluate", _failing_on("pod-41", error))
    sequential, concurrent = _compare((POD_SECURITY, "-r", DATASETS[1].resources(tmp_path)), forks)
    assert concurrent.exit_code == sequential.exit_code == exit_code
    assert concurrent.stderr == sequential.stderr == stderr
    assert concurrent.stdout == sequential.stdout == ""


def test_worker_that_dies_fails_the_command(forks: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parent = os.getpid()

    def dying(policy_set: Any, context: EvaluationContext, **kwargs: Any) -> list[PolicyResponse]:
        if context.resource.name == "pod-41" and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate(policy_set, context, **kwargs)

    monkeypatch.setattr("cli.suite.evaluate", dying)
    result = run(POD_SECURITY, "-r", DATASETS[1].resources(tmp_path), "--concurrency", "2")
    assert forks == [2]
    assert result.exit_code == 2
    assert re.fullmatch(
        r"evaluation worker [12] of 2 was killed by SIGKILL before sending all its results;"
        r" run again with --concurrency 1\n",
        result.stderr,
    )
    assert result.stdout == ""


def test_without_fork_the_run_is_sequential(forks: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "fork_available", lambda: False)
    result = run(EXAMPLES / "policies", "-r", EXAMPLES / "resources", "--concurrency", "2")
    assert result.exit_code == 1
    assert forks == []


# --- the pieces of cli.parallel -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountCase:
    id: str
    concurrency: int
    subjects: int
    expected: int
    fork: bool = True
    cpus: int | None = 4


COUNT_CASES = [
    CountCase("one-asked", 1, 1000, 1),
    CountCase("two-asked", 2, 1000, 2),
    CountCase("zero-is-one-per-cpu", 0, 1000, 4),
    CountCase("zero-without-cpu-count", 0, 1000, 1, cpus=None),
    CountCase("fewer-when-few-subjects", 8, 24, 3),
    CountCase("too-few-subjects", 2, 15, 1),
    CountCase("no-subjects", 2, 0, 1),
    CountCase("no-fork", 2, 1000, 1, fork=False),
]


@pytest.mark.parametrize("case", COUNT_CASES, ids=[case.id for case in COUNT_CASES])
def test_worker_count(case: CountCase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "MIN_SUBJECTS_PER_WORKER", 8)
    monkeypatch.setattr(parallel, "fork_available", lambda: case.fork)
    monkeypatch.setattr(os, "cpu_count", lambda: case.cpus)
    assert parallel.worker_count(case.concurrency, case.subjects) == case.expected


def test_negative_worker_count_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency must be 0 or more"):
        parallel.worker_count(-1, 100)


@pytest.mark.parametrize(
    ("subjects", "workers", "expected"),
    [
        pytest.param(5, 2, 1, id="tiny"),
        pytest.param(60, 2, 8, id="four-chunks-per-worker"),
        pytest.param(500, 2, 63, id="bench-size"),
        pytest.param(100_000, 4, 64, id="capped"),
        pytest.param(0, 2, 1, id="empty"),
    ],
)
def test_chunk_size(subjects: int, workers: int, expected: int) -> None:
    assert parallel.chunk_size(subjects, workers) == expected


def _example_responses() -> list[list[PolicyResponse]]:
    inputs = suite.RunInputs(
        policy_set=suite.load_policy_set([EXAMPLES / "policies"]),
        subjects=tuple(suite.subjects_of(suite.resource_documents(load_paths([EXAMPLES / "resources"])))),
    )
    return [responses for _, responses in suite.evaluate_subjects(inputs, "CREATE")]


def test_responses_travel_and_come_back_equal() -> None:
    batch = _example_responses()
    responses = [response for subject in batch for response in subject]
    assert any(rule.properties for response in responses for rule in response.rules)
    assert any(response.patched_object is not None for response in responses)
    assert any(response.generated for response in responses)
    assert any(not response.rules for response in responses)
    with pytest.raises(TypeError, match="mappingproxy"):
        pickle.dumps(batch)
    back = list(from_plain(pickle.loads(pickle.dumps(to_plain(batch)))))
    assert back == batch
    for response in (response for subject in back for response in subject):
        assert all(isinstance(rule.properties, MappingProxyType) for rule in response.rules)
        assert all(isinstance(obj, MappingProxyType) for obj in response.generated)


def test_equal_rules_travel_once() -> None:
    rule = RuleResult(Status.PASS, "", properties=MappingProxyType({"index": "0"}))
    policy = PolicyRef("ValidatingPolicy", "p")
    batch = [[PolicyResponse(policy, ResourceKey("v1", "Pod", "ns", f"pod-{n}"), (rule,))] for n in range(3)]
    back = list(from_plain(pickle.loads(pickle.dumps(to_plain(batch)))))
    assert back == batch
    assert len({id(subject[0].rules[0]) for subject in back}) == 1


def test_plain_form_thaws_nested_views() -> None:
    nested = MappingProxyType({"metadata": MappingProxyType({"labels": MappingProxyType({"a": "b"})}), "list": [()]})
    response = PolicyResponse(
        PolicyRef("MutatingPolicy", "m"), ResourceKey("v1", "Pod", "", "p"), (), patched_object=nested
    )
    [[back]] = from_plain(pickle.loads(pickle.dumps(to_plain([[response]]))))
    assert back.patched_object == {"metadata": {"labels": {"a": "b"}}, "list": [()]}


class _Unrebuildable(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.handle = lambda: code  # not picklable


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        pytest.param(LoadError("bad", Location("f.yaml", 3)), LoadError, "f.yaml:3: bad", id="load-error"),
        pytest.param(ZeroDivisionError("boom"), ZeroDivisionError, "boom", id="builtin"),
        pytest.param(FileNotFoundError(2, "gone", "x"), FileNotFoundError, "[Errno 2] gone: 'x'", id="os-error"),
        pytest.param(_Unrebuildable(7), WorkerError, "_Unrebuildable: code 7", id="unpicklable-falls-back"),
    ],
)
def test_failures_are_rebuilt_as_raised(error: Exception, kind: type[Exception], text: str) -> None:
    rebuilt = pickle.loads(pickle.dumps(Failure.of(error))).rebuild()
    assert type(rebuilt) is kind
    assert str(rebuilt) == text
    assert isinstance(rebuilt.__cause__, parallel.RemoteTraceback)


# --- recycled workers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_recycled_workers_give_the_sequential_results(workers: int, tmp_path: Path) -> None:
    """With `recycle_after=1` every chunk is evaluated by a freshly forked worker; results are unchanged."""
    path = tmp_path / "pods.yaml"
    path.write_text(_pods(40, privileged_every=3))
    inputs = suite.RunInputs(
        policy_set=suite.load_policy_set([str(POD_SECURITY)], ()),
        subjects=tuple(suite.subjects_of(suite.resource_documents(load_paths([path])))),
    )
    expected = [(s.key, r) for s, r in suite.evaluate_subjects(inputs, "CREATE", unmatched=False)]
    forked: list[int] = []

    class Spy(ParallelEvaluation):
        def _fork(self, first: int) -> Any:
            forked.append(first)
            return super()._fork(first)

    with Spy(inputs, "CREATE", unmatched=False, workers=workers, size=5, recycle_after=1) as evaluation:
        got = [(s.key, r) for s, r in evaluation]
    assert got == expected
    chunks = -(-len(inputs.subjects) // 5)
    assert sorted(forked) == list(range(chunks)), "one fresh worker per chunk"


def test_a_long_sequential_run_evaluates_in_recycled_workers(
    forks: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(parallel, "RECYCLE_AFTER_SUBJECTS", 8)
    monkeypatch.setattr(parallel, "RECYCLE_MIN_SUBJECTS", 8)
    resources = tmp_path / "pods.yaml"
    resources.write_text(_pods(60, privileged_every=7))
    recycled = run(POD_SECURITY, "-r", resources, "-o", "json")
    assert forks == [1], "a sequential run of at least RECYCLE_MIN_SUBJECTS subjects forks one recycled worker"
    monkeypatch.setattr(parallel, "fork_available", lambda: False)
    in_process = run(POD_SECURITY, "-r", resources, "-o", "json")
    assert forks == [1]
    assert recycled.exit_code == in_process.exit_code == 1
    assert _timestamps_zeroed(recycled.stdout) == _timestamps_zeroed(in_process.stdout)
