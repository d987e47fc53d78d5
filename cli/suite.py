"""The offline runs behind `celvern apply` and `celvern test`: pure logic, no printing.

Both commands do the same thing at heart: load policies, resources and the CLI's input files, build the
admission request Kyverno's CLI would build for each resource (kyverno-cel-spec.md 3.3), evaluate every
policy, and then either count the results (apply) or score them against a Test's expectations (test, spec
4.2). Keeping that here, apart from argument parsing and rendering, lets both commands share one evaluation
loop and lets tests check scoring without going through click.

Scoring follows Kyverno's `kyverno test`, including its quirks: `rule` and `kind` are ignored for CEL
policies, a policy whose responses on a resource carry no rules scores `Excluded` (a pass), and empty
responses of a policy with one plain resource rule are dropped before scoring, so such a row scores `Not
found`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cli.inputs import (
    ClusterContext,
    ExpectedResult,
    RequestUser,
    TestDocument,
    Values,
    load_cluster_resources,
    load_context,
    load_user_info,
    load_values,
    parse_test,
)
from engine.cel.libraries.offline import InMemoryResources, MockedHttp
from engine.cel.services import Services
from engine.comparison import resource_diff, same_resource
from engine.errors import CelvernError, LoadError, Location
from engine.evaluation import EvaluationContext
from engine.generating import is_tracing_label
from engine.loader import Document, load_paths, parse_text, read_text
from engine.matching import NamespaceLabels
from engine.model import MatchResources
from engine.policy_set import PolicySet, build_policy_set, evaluate, split_documents
from engine.request import CREATE, request_for_resource
from engine.resources import DEFAULT_MAPPER, ResourceMapper
from engine.results import PolicyResponse, ResourceKey, Status, report_status
from engine.schemas import SchemaIndex, default_schema_index

JSON_PAYLOAD = "JSON payload"
"""How Kyverno prints the resource of a JSON payload in `apply` output."""


# --- inputs of one run --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    """One thing policies are evaluated against: a Kubernetes object or a JSON payload."""

    key: ResourceKey
    resource: Mapping[str, Any] | None = None
    payload: Any = None

    @property
    def is_payload(self) -> bool:
        return self.resource is None


DEFAULT_NAMESPACE = "default"


def with_default_namespace(resource: Mapping[str, Any], mapper: ResourceMapper) -> Mapping[str, Any]:
    """A namespaced resource without a namespace lands in `default`, as with kubectl and Kyverno's CLI."""
    metadata = resource.get("metadata")
    if not isinstance(metadata, Mapping) or metadata.get("namespace"):
        return resource
    api_version, kind = resource.get("apiVersion"), resource.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return resource
    if not mapper.for_kind(api_version, kind).namespaced:
        return resource
    return {**resource, "metadata": {**metadata, "namespace": DEFAULT_NAMESPACE}}


def subjects_of(
    resources: Iterable[Mapping[str, Any]],
    payloads: Iterable[tuple[str, Any]] = (),
    *,
    mapper: ResourceMapper | None = None,
) -> list[Subject]:
    """Subjects for resources (keyed by their identity) and payloads (keyed by their file name)."""
    mapper = mapper or DEFAULT_MAPPER
    subjects = []
    for raw in resources:
        # The key places a namespace-less namespaced resource in `default`; see `evaluate_subjects`.
        subjects.append(Subject(ResourceKey.of(with_default_namespace(raw, mapper)), resource=raw))
    subjects.extend(Subject(ResourceKey("", "", "", name), payload=payload) for name, payload in payloads)
    return subjects


class Namespaces:
    """Labels and `namespaceObject` for the namespaces resources live in.

    Sources, by priority: the values file's `namespaces[]` (full objects), its `namespaceSelector[]` (name and
    labels), then Namespace documents among the resources. A namespace none of them knows has no labels
    (Kyverno's CLI treats it as unlabelled rather than unknown) and a null `namespaceObject`.
    """

    __slots__ = ("_cache", "_objects")

    def __init__(self, values: Values, resources: Iterable[Mapping[str, Any]] = ()) -> None:
        objects: dict[str, Mapping[str, Any]] = {}
        for resource in resources:
            if resource.get("kind") == "Namespace" and resource.get("apiVersion") == "v1":
                name = ResourceKey.of(resource).name
                if name:
                    objects[name] = resource
        for name, labels in values.namespace_labels.items():
            objects[name] = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels},
            }
        objects.update(values.namespaces)
        self._objects = objects
        self._cache: dict[str, tuple[NamespaceLabels, Mapping[str, Any] | None]] = {}

    def lookup(self, name: str) -> tuple[NamespaceLabels, Mapping[str, Any] | None]:
        cached = self._cache.get(name)
        if cached is None:
            obj = self._objects.get(name) if name else None
            labels: Mapping[str, str] = {}
            if obj is not None:
                metadata = obj.get("metadata")
                raw = metadata.get("labels") if isinstance(metadata, Mapping) else None
                if isinstance(raw, Mapping):
                    labels = {str(key): str(value) for key, value in raw.items()}
            cached = (NamespaceLabels(labels, known=True), obj)
            self._cache[name] = cached
        return cached


@dataclass(frozen=True, slots=True)
class RunInputs:
    """Everything one evaluation run needs besides the operation."""

    policy_set: PolicySet
    subjects: tuple[Subject, ...]
    values: Values = field(default_factory=Values)
    user: RequestUser = field(default_factory=RequestUser)
    mapper: ResourceMapper = DEFAULT_MAPPER
    services: Services = field(default_factory=Services)
    schemas: SchemaIndex | None = None
    """Structural schemas for ApplyConfiguration merges (None: the default Kubernetes schemas)."""


def evaluate_subjects(
    inputs: RunInputs, operation: str, *, unmatched: bool = True, indices: Iterable[int] | None = None
) -> Iterator[tuple[Subject, list[PolicyResponse]]]:
    """Evaluate every policy against every subject, lazily (one subject at a time, for progress display).

    `unmatched=False` leaves out the rule-less responses of policies that cannot match (what `celvern test` scores
    as "Excluded"; `celvern apply` only reports rule results). `indices` evaluates only the subjects at those
    positions, in that order, with namespace lookups still drawing on every subject: how `cli.parallel` workers
    share out one run."""
    namespaces = Namespaces(inputs.values, (s.resource for s in inputs.subjects if s.resource is not None))
    user = inputs.user
    subjects = inputs.subjects if indices is None else (inputs.subjects[index] for index in indices)
    for subject in subjects:
        if subject.resource is None:
            context = EvaluationContext(request=None, payload=subject.payload, services=inputs.services)
            responses = [
                dataclasses.replace(response, resource=subject.key)
                for response in evaluate(inputs.policy_set, context, unmatched=unmatched)
            ]
        else:
            parent, sub = inputs.values.subresources.get(subject.key.kind, ("", ""))
            # Policies see a namespace-less namespaced resource in `default` (object.metadata.namespace is set,
            # as in Kyverno's CLI), but a mutated resource is reported as written, without that namespace.
            evaluated = with_default_namespace(subject.resource, inputs.mapper)
            request = request_for_resource(
                evaluated,
                operation=operation,
                default_namespace=DEFAULT_NAMESPACE,
                parent_resource=parent,
                sub_resource=sub,
                user_info=user.user_info,
                mapper=inputs.mapper,
                roles=user.roles,
                cluster_roles=user.cluster_roles,
            )
            labels, namespace_object = namespaces.lookup(request.namespace)
            context = EvaluationContext(
                request=request,
                namespace=labels,
                namespace_object=namespace_object,
                services=inputs.services,
                schemas=inputs.schemas,
                mapper=inputs.mapper,
            )
            responses = evaluate(inputs.policy_set, context, unmatched=unmatched)
            if evaluated is not subject.resource:
                responses = [_without_default_namespace(response) for response in responses]
        yield subject, responses


def _without_default_namespace(response: PolicyResponse) -> PolicyResponse:
    patched = response.patched_object
    if patched is None:
        return response
    metadata = patched.get("metadata")
    if not isinstance(metadata, Mapping) or metadata.get("namespace") != DEFAULT_NAMESPACE:
        return response
    stripped = {**patched, "metadata": {k: v for k, v in metadata.items() if k != "namespace"}}
    return dataclasses.replace(response, patched_object=stripped)


@dataclass(slots=True)
class ApplyOutcome:
    """What `celvern apply` found: counters per status and the responses that carry rule results."""

    subjects: int = 0
    counts: dict[Status, int] = field(default_factory=lambda: dict.fromkeys(Status, 0))
    responses: list[tuple[Subject, PolicyResponse]] = field(default_factory=list)

    def add(self, subject: Subject, responses: Iterable[PolicyResponse]) -> None:
        self.subjects += 1
        for response in responses:
            if not response.rules:
                continue
            self.responses.append((subject, response))
            for rule in response.rules:
                self.counts[report_status(response.policy, rule.status)] += 1

    def exit_code(self, warn_exit_code: int = 0) -> int:
        """1 on any fail or error; else `warn_exit_code` on warnings; else 0 (Kyverno `exit()`)."""
        if self.counts[Status.FAIL] or self.counts[Status.ERROR]:
            return 1
        if self.counts[Status.WARN] and warn_exit_code:
            return warn_exit_code
        return 0


# --- loading ------------------------------------------------------------------------------------------------


def load_policy_set(
    policy_paths: Sequence[str | os.PathLike[str]], exception_paths: Sequence[str | os.PathLike[str]] = ()
) -> PolicySet:
    """Policies (and exceptions found among them) plus exception files; other documents are ignored."""
    policy_documents, _ = split_documents(load_paths(policy_paths))
    exception_documents, _ = split_documents(load_paths(exception_paths))
    return build_policy_set(policy_documents, exception_documents)


def resource_documents(documents: Iterable[Document]) -> list[Mapping[str, Any]]:
    """The Kubernetes objects among `documents` (policies and exceptions left out)."""
    _, others = split_documents(documents)
    return [document.data for document in others]


def load_payloads(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[str, Any]]:
    """JSON payloads, keyed by file name. A `.json` file is one payload, whatever its top-level type."""
    payloads: list[tuple[str, Any]] = []
    for path in paths:
        text = read_text(path)
        name = Path(path).name
        if str(path).endswith(".json"):
            try:
                payloads.append((name, orjson.loads(text)))
                continue
            except orjson.JSONDecodeError as exc:
                raise LoadError(f"invalid JSON: {exc}", Location(str(path))) from None
        payloads.extend((name, document.data) for document in parse_text(text, str(path)))
    return payloads


def build_services(
    context: ClusterContext, mapper: ResourceMapper, api_call_responses: Sequence[Mapping[str, Any]] = ()
) -> Services:
    """Offline services: `resource.*` from the context's objects, `http.*` from mocks, context images."""
    try:
        resources = InMemoryResources(context.resources, plural_for=mapper.plural) if context.resources else None
        http = MockedHttp(api_call_responses) if api_call_responses else None
    except ValueError as exc:
        raise LoadError(f"invalid context: {exc}") from None
    return Services(resources=resources, http=http, image_data=dict(context.images))


# --- kyverno test -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One scored (result entry x resource) pair of a Test."""

    test: str
    policy: str
    rule: str
    resource: str
    expected: str
    actual: str
    ok: bool
    reason: str
    message: str = ""
    skipped: bool = False
    """Kyverno's `Skip` verdict for a policy that failed validation (here: did not compile). Kyverno counts it
    as passed; celvern shows Skip but counts it as failed, so that a broken policy never goes unnoticed."""

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "Skip"
        return "Pass" if self.ok else "Fail"

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "policy": self.policy,
            "resource": self.resource,
            "expected": self.expected,
            "actual": self.actual,
            "ok": self.ok,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class TestFileResult:
    """The outcome of one test file: its rows, or the error that kept it from loading."""

    __test__ = False  # not a pytest test class

    path: str
    rows: tuple[Row, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> int:
        return sum(1 for row in self.rows if row.ok)

    @property
    def failed(self) -> int:
        return sum(1 for row in self.rows if not row.ok)


def discover_test_files(paths: Sequence[str], file_name: str = "kyverno-test.yaml") -> list[Path]:
    """Test files under `paths` (files are taken as given; directories are searched, hidden ones included)."""
    found: list[Path] = []
    for path in paths:
        root = Path(path)
        if root.is_file():
            found.append(root)
            continue
        if not root.is_dir():
            raise LoadError("no such file or directory", Location(str(path)))
        for directory, subdirectories, files in os.walk(root):
            subdirectories.sort()
            if file_name in files:
                found.append(Path(directory) / file_name)
    return found


def run_test_file(path: Path) -> TestFileResult:
    """Load and run every Test document of one file. Load errors become the file's error, never exceptions."""
    label = str(path)
    try:
        documents = load_paths([path])
        if not documents:
            raise LoadError("no Test document found", Location(label))
        tests = [parse_test(document) for document in documents]
    except CelvernError as error:
        return _failed(label, (), error, ())
    rows: list[Row] = []
    notes: list[str] = []
    for test in tests:
        try:
            test_rows, test_notes = run_test(test, label)
        except CelvernError as error:
            return _failed(label, rows, error, notes)
        rows.extend(test_rows)
        notes.extend(test_notes)
    return TestFileResult(label, tuple(rows), notes=tuple(notes))


def _failed(label: str, rows: Iterable[Row], error: CelvernError, notes: Iterable[str]) -> TestFileResult:
    """A file whose (remaining) tests did not load: the error becomes one failed row."""
    row = Row(label, "", "", "", "", "error", False, str(error))
    return TestFileResult(label, (*rows, row), error=str(error), notes=tuple(notes))


def _load_test_inputs(test: TestDocument) -> tuple[RunInputs, list[str]]:
    notes = [f"{test.source}: {key} are not supported yet and were ignored" for key in test.unsupported_inputs]
    policy_set = load_policy_set(test.policies, test.exceptions)
    resources = resource_documents(load_paths(test.resources)) if test.resources else []
    payloads = load_payloads(test.json_payloads)
    values = load_values(test.variables) if test.variables is not None else test.values or Values()
    user = load_user_info(test.user_info) if test.user_info is not None else RequestUser()
    context = load_context(test.context) if test.context is not None else ClusterContext()
    if test.cluster_resources:
        context = context.merge(load_cluster_resources(list(test.cluster_resources)))
    mapper = ResourceMapper.build(context.crds)
    services = build_services(context, mapper, [call.to_raw() for call in test.api_call_responses])
    subjects = tuple(subjects_of(resources, payloads, mapper=mapper))
    schemas = default_schema_index().with_crds(context.crds) if policy_set.mutating else None
    inputs = RunInputs(policy_set, subjects, values, user, mapper, services, schemas)
    return inputs, notes


def run_test(test: TestDocument, label: str) -> tuple[list[Row], list[str]]:
    """Evaluate a Test document and score its results; raises CelvernError when its inputs do not load."""
    inputs, notes = _load_test_inputs(test)
    default_operation = inputs.values.operation or CREATE
    operations = {default_operation, *(r.operation for r in test.results if r.operation)}
    runs: dict[str, dict[str, list[PolicyResponse]]] = {}
    for operation in sorted(operations):
        by_policy: dict[str, list[PolicyResponse]] = {}
        for _, responses in evaluate_subjects(inputs, operation):
            for response in responses:
                by_policy.setdefault(response.policy.name, []).append(response)
        runs[operation] = by_policy
    scorer = Scorer(inputs.policy_set, inputs.subjects, label, test.source.parent)
    rows: list[Row] = []
    for expected in test.results:
        rows.extend(scorer.score(expected, runs[expected.operation or default_operation]))
    for policy in inputs.policy_set.compile_errors:
        notes.append(f"policy failed to compile: {policy}")
    return rows, notes


def drops_empty_responses(constraints: MatchResources | None) -> bool:
    """Kyverno's CLI drops rule-less responses of a policy with one resource rule and no selectors."""
    if constraints is None or len(constraints.resource_rules) != 1:
        return False
    selectors = (constraints.namespace_selector, constraints.object_selector)
    return all(selector is None or selector.empty for selector in selectors)


def resource_label(key: ResourceKey) -> str:
    """`apiVersion/Kind/namespace/name` as Kyverno's test table prints it (a payload prints its file name)."""
    if not key.api_version and not key.kind:
        return key.name
    return "/".join(part for part in (key.api_version, key.kind, key.namespace, key.name) if part)


class Scorer:
    """Scores result entries of one Test against the responses of its runs."""

    def __init__(
        self, policy_set: PolicySet, subjects: Sequence[Subject], label: str, base: Path | None = None
    ) -> None:
        self._label = label
        self._base = base
        self._keys = [subject.key for subject in subjects]
        self._unsupported = {policy.name: policy.kind for policy in policy_set.unsupported}
        self._unsupported.update(
            {p.name: f"{p.kind} with mutateExisting" for p in policy_set.mutating if p.source.mutate_existing}
        )
        compiled = policy_set.compiled
        self._invalid = {policy.name: str(policy.error) for policy in compiled if policy.error is not None}
        # Kyverno evaluates autogen rules inside the policy's one response, so the decision to drop an empty
        # response depends on the policy as written, not on its variants.
        self._dropping = {
            policy.name: drops_empty_responses(policy.source.match_constraints)
            for policy in compiled
            if not policy.variant
        }
        self._expected_documents: dict[Path, list[Document]] = {}

    def _row(
        self,
        expected: ExpectedResult,
        resource: str,
        actual: str,
        ok: bool,
        reason: str,
        message: str = "",
        skipped: bool = False,
    ) -> Row:
        return Row(
            self._label,
            expected.policy,
            expected.rule,
            resource,
            expected.result.value,
            actual,
            ok,
            reason,
            message,
            skipped,
        )

    def _targets(
        self, expected: ExpectedResult, responses: Sequence[PolicyResponse]
    ) -> list[tuple[str, list[ResourceKey]]]:
        """(label, matching resource keys) for each resource the entry names, or for every trigger."""
        targets: list[tuple[str, list[ResourceKey]]] = []
        for name in expected.resources:
            namespace, _, short = name.rpartition("/")
            keys = [k for k in self._keys if k.name == short and (not namespace or k.namespace == namespace)]
            targets.append((resource_label(keys[0]) if keys else name, keys))
        for spec in expected.resource_specs:
            keys = [
                k
                for k in self._keys
                if (not spec.name or k.name == spec.name)
                and (not spec.namespace or k.namespace == spec.namespace)
                and (not spec.kind or k.kind == spec.kind)
                and (not spec.version or k.version == spec.version)
                and (not spec.group or k.group == spec.group)
            ]
            label = "/".join(p for p in (spec.group, spec.version, spec.kind, spec.namespace, spec.name) if p)
            targets.append((resource_label(keys[0]) if keys else label, keys))
        if not expected.resources and not expected.resource_specs:
            seen = list(dict.fromkeys(r.resource for r in responses if r.rules or not self._drops(r.policy.name)))
            targets.extend((resource_label(key), [key]) for key in seen)
            if not seen:
                targets.append(("", []))
        return targets

    def _drops(self, name: str) -> bool:
        return self._dropping.get(name, False)

    def score(self, expected: ExpectedResult, run: Mapping[str, list[PolicyResponse]]) -> list[Row]:
        name = expected.policy_name
        responses = run.get(name, [])
        rows: list[Row] = []
        for label, keys in self._targets(expected, responses):
            if name in self._unsupported:
                rows.append(self._row(expected, label, "", False, f"not supported yet: {self._unsupported[name]}"))
                continue
            if name in self._invalid:
                rows.append(self._row(expected, label, "", False, "Invalid Policy", self._invalid[name], True))
                continue
            wanted = set(keys)
            found = [r for r in responses if r.resource in wanted]
            rules = [(response.policy, rule) for response in found for rule in response.rules]
            if not found or (not rules and self._drops(name)):
                rows.append(self._row(expected, label, "", False, "Not found"))
                continue
            if not rules:
                rows.append(self._row(expected, label, Status.SKIP.value, True, "Excluded"))
                continue
            statuses = [report_status(policy, rule.status) for policy, rule in rules]
            message = "; ".join(dict.fromkeys(rule.message for _, rule in rules if rule.message))
            if (expected.patched_resources or expected.generated_resources) and all(
                status is Status.PASS for status in statuses
            ):
                rows.append(self._resources_row(expected, label, found, message))
                continue
            mismatched = [status for status in statuses if status is not expected.result]
            if mismatched:
                actual = mismatched[0].value
                reason = f"Want {expected.result.value}, got {actual}"
                rows.append(self._row(expected, label, actual, False, reason, message))
            else:
                rows.append(self._row(expected, label, expected.result.value, True, "Ok", message))
        return rows

    def _resources_row(
        self, expected: ExpectedResult, label: str, found: Sequence[PolicyResponse], message: str
    ) -> Row:
        """Score an entry with `patchedResources` or `generatedResource(s)` (spec 4.2): a passing policy whose
        resources match the expected documents counts as `pass`, one whose resources differ (or are missing from
        the files) as `fail` — Kyverno's long-standing reading, which lets a test expect `fail` for a policy that
        must not produce a resource."""
        if expected.patched_resources:
            patched = next((r.patched_object for r in found if r.rules and r.patched_object is not None), None)
            actuals = [patched] if patched is not None else []
            files = [Path(expected.patched_resources)]
        else:
            actuals = [_untraced(obj) for r in found for obj in r.generated]
            files = [Path(path) for path in expected.generated_resources]
        difference = "nothing was produced" if not actuals else ""
        for actual in actuals:
            difference = difference or self._difference(files, actual)
        if difference == "":
            status = Status.PASS
        elif expected.result is Status.FAIL:
            status = Status.FAIL
        else:
            return self._row(expected, label, Status.FAIL.value, False, "Resource diff", difference)
        if status is expected.result:
            return self._row(expected, label, status.value, True, "Ok", message)
        return self._row(expected, label, status.value, False, f"Want {expected.result.value}, got {status.value}")

    def _difference(self, files: Sequence[Path], actual: Mapping[str, Any]) -> str:
        """ "" when `actual` matches its document (same apiVersion, kind, name) in the expected files, else what
        differs."""
        wanted = ResourceKey.of(actual)
        for path in files:
            if self._base is not None and not path.is_absolute():
                path = self._base / path
            try:
                if path not in self._expected_documents:
                    self._expected_documents[path] = load_paths([path])
            except CelvernError as error:
                return str(error)
            for document in self._expected_documents[path]:
                key = ResourceKey.of(document.data)
                if (key.api_version, key.kind, key.name) == (wanted.api_version, wanted.kind, wanted.name) and (
                    not key.namespace or key.namespace == wanted.namespace
                ):
                    return "" if same_resource(document.data, actual) else resource_diff(document.data, actual)
        return f"{wanted.kind}/{wanted.name} not found in {', '.join(path.name for path in files)}"


def _untraced(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """A generated object without celvern's tracing labels (tests compare what the policy asked for)."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("labels"), Mapping):
        return obj
    labels = {key: value for key, value in metadata["labels"].items() if not is_tracing_label(key)}
    trimmed = {key: value for key, value in metadata.items() if key != "labels"}
    if labels:
        trimmed["labels"] = labels
    return {**obj, "metadata": trimmed}


def summarize(results: Iterable[TestFileResult]) -> tuple[int, int]:
    """(passed, failed) rows over all files; a file that did not load counts as one failed row."""
    passed = failed = 0
    for result in results:
        passed += result.passed
        failed += result.failed
    return passed, failed
