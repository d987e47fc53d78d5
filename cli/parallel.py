"""`celvern apply --concurrency N`: subjects evaluated in forked worker processes, merged back in subject order.

Compiled CEL programs (cel-expr-python objects) cannot be pickled, so the policy set never travels: the workers
are forked once it is compiled and inherit it, with every other input of the run. The subjects are cut into
chunks dealt out round-robin (worker w evaluates chunks w, w + N, w + 2N, ...); each worker sends one message
per chunk, and the parent reads chunk 0 from worker 0, chunk 1 from worker 1, and so on. Results thus arrive in
subject order, so every output is byte for byte that of a sequential run and the progress bar moves as they
come; and as a send blocks until the parent has read the worker's previous message, no worker runs more than
about one chunk ahead, which keeps memory bounded whatever the number of subjects.

Only results travel, in a compact picklable form: `to_plain` turns a chunk's responses into tuples, with dicts
for their read-only `MappingProxyType` views, and `from_plain` turns them back. An exception in a worker is
rebuilt and raised again in the parent, so a `CelvernError` prints the same message and exits 2 as it would
sequentially; a worker that dies raises `WorkerDied`. Where forking is unavailable or unsafe (not Linux, or
other threads running), and where there are too few subjects for workers to pay for themselves, `worker_count`
answers 1: evaluate sequentially.
"""

from __future__ import annotations

import gc
import itertools
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import MappingProxyType, TracebackType
from typing import Any

from cli.suite import RunInputs, Subject, evaluate_subjects
from engine.errors import CelvernError
from engine.results import PolicyRef, PolicyResponse, ResourceKey, RuleResult, Status

MIN_SUBJECTS_PER_WORKER = 32
"""Fewer subjects than this per worker, and forking costs more than it saves: use fewer workers (or none). With
the validating library on two cores, two workers break even at about 64 subjects and halve the evaluation time
from a few hundred on."""

CHUNKS_PER_WORKER = 4
"""Chunks each worker gets at least (when chunks stay under `MAX_CHUNK_SIZE`), so that the workers finish close
together."""

MAX_CHUNK_SIZE = 64
"""Subjects per message at most: bounds what a worker holds ahead of the parent."""

RECYCLE_AFTER_SUBJECTS = 128
"""Subjects a worker evaluates before a fresh one takes over (when recycling): bounds what cel-expr-python's
leak accumulates in one process to a few tens of MiB with the whole library."""

RECYCLE_MIN_SUBJECTS = RECYCLE_AFTER_SUBJECTS
"""From this many subjects, even a sequential run evaluates in a recycled forked worker."""

_EXIT_GRACE_SECONDS = 5.0
"""How long a worker that sent all its results may take to exit before it is terminated."""

Evaluations = Iterator[tuple[Subject, list[PolicyResponse]]]


# --- when to fork -------------------------------------------------------------------------------------------


def fork_available() -> bool:
    """Whether forking this process is safe: on Linux, and with no other thread running (a forked child has only
    the forking thread, and would deadlock on a lock another thread held, such as a stream's)."""
    return (
        sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    )


def worker_count(concurrency: int, subjects: int) -> int:
    """Workers for `--concurrency concurrency` (0: one per CPU) over `subjects` subjects; 1 means sequential.

    Fewer workers than asked for when some would get fewer than `MIN_SUBJECTS_PER_WORKER` subjects."""
    if concurrency < 0:
        raise ValueError(f"concurrency must be 0 or more, not {concurrency}")
    wanted = concurrency or os.cpu_count() or 1
    workers = min(wanted, subjects // MIN_SUBJECTS_PER_WORKER)
    return workers if workers > 1 and fork_available() else 1


def chunk_size(subjects: int, workers: int) -> int:
    """Subjects per chunk: about `CHUNKS_PER_WORKER` chunks per worker, none larger than `MAX_CHUNK_SIZE`."""
    return max(1, min(MAX_CHUNK_SIZE, math.ceil(subjects / (workers * CHUNKS_PER_WORKER))))


# --- what travels -------------------------------------------------------------------------------------------


PlainRule = tuple[Status, str, str, tuple[tuple[str, str], ...], str]
"""A `RuleResult` as (status, message, rule, properties as items, skip reason)."""

PlainResponse = tuple[
    PolicyRef, ResourceKey, tuple[PlainRule, ...], str, str, Mapping[str, Any] | None, tuple[dict[str, Any], ...]
]
"""A `PolicyResponse` as a tuple of its fields, in order, with plain rules and dicts for read-only views."""

PlainBatch = list[list[PlainResponse]]
"""The responses for each subject of a chunk."""


def to_plain(batch: Iterable[Iterable[PolicyResponse]]) -> PlainBatch:
    """The responses for each subject of a chunk as plain tuples and dicts, which pickle accepts (it refuses the
    `MappingProxyType` views of rule properties and generated objects).

    Equal rules share one tuple, so that pickle writes them once: most results of a policy are alike."""
    rules: dict[PlainRule, PlainRule] = {}

    def plain_rule(rule: RuleResult) -> PlainRule:
        plain = (rule.status, rule.message, rule.rule, tuple(rule.properties.items()), rule.skip_reason)
        return rules.setdefault(plain, plain)

    return [
        [
            (
                response.policy,
                response.resource,
                tuple(plain_rule(rule) for rule in response.rules),
                response.operation,
                response.autogen,
                None if response.patched_object is None else _thawed(response.patched_object),
                tuple(_thawed(obj) for obj in response.generated),
            )
            for response in responses
        ]
        for responses in batch
    ]


def from_plain(batch: PlainBatch) -> Iterator[list[PolicyResponse]]:
    """The responses `to_plain` made `batch` from, subject by subject: equal to them, with rule properties and
    generated objects read-only again (nested read-only views stay dicts, which outputs read alike). Equal rules
    come back as one shared, immutable `RuleResult`."""
    rules: dict[int, RuleResult] = {}  # by id: `to_plain` shared equal rules, pickle kept them shared

    def rule_result(plain: PlainRule) -> RuleResult:
        rule = rules.get(id(plain))
        if rule is None:
            status, message, name, properties, skip_reason = plain
            rule = RuleResult(status, message, name, MappingProxyType(dict(properties)), skip_reason)
            rules[id(plain)] = rule
        return rule

    for responses in batch:
        yield [
            PolicyResponse(
                policy,
                resource,
                tuple(rule_result(rule) for rule in plain_rules),
                operation,
                autogen,
                patched,
                tuple(MappingProxyType(obj) for obj in generated),
            )
            for policy, resource, plain_rules, operation, autogen, patched, generated in responses
        ]


def _thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_thawed(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_thawed(item) for item in value)
    return value


class WorkerDied(CelvernError):
    """A worker process ended without sending all its results (killed, out of memory, crashed)."""


class WorkerError(Exception):
    """An exception raised in a worker that could not be rebuilt in the parent: its type and message."""


class RemoteTraceback(Exception):
    """The traceback in the worker, chained as the cause of the exception raised again in the parent (shown
    with `CELVERN_DEBUG`)."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}" if self.args else ""


@dataclass(frozen=True, slots=True)
class Failure:
    """An exception raised in a worker, in a form that comes back as it was raised: the exception itself when
    pickle carries it faithfully, else its type, `args` and attributes (an exception with its own `__init__`,
    such as `LoadError`, does not survive pickle as it is), else a `WorkerError` with its type and message."""

    traceback: str
    error: BaseException | None = None
    kind: type[BaseException] = WorkerError
    args: tuple[Any, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        text = "".join(traceback.format_exception(error))
        state = dict(getattr(error, "__dict__", {}))
        for failure in (cls(text, error=error), cls(text, kind=type(error), args=error.args, state=state)):
            if failure._returns(error):
                return failure
        return cls(text, args=(f"{type(error).__name__}: {error}",))

    def _returns(self, error: BaseException) -> bool:
        try:
            rebuilt = pickle.loads(pickle.dumps(self)).rebuild()
        except Exception:
            return False
        return type(rebuilt) is type(error) and str(rebuilt) == str(error)

    def rebuild(self) -> BaseException:
        """The exception again (its `__init__` is not called), caused by a `RemoteTraceback`."""
        if self.error is not None:
            error = self.error
        else:
            error = self.kind.__new__(self.kind, *self.args)
            error.args = self.args
            error.__dict__.update(self.state)
        error.__cause__ = RemoteTraceback(self.traceback)
        return error


# --- the workers ---------------------------------------------------------------------------------------------


def _chunk(number: int, size: int, total: int) -> range:
    return range(number * size, min((number + 1) * size, total))


def _work(
    inputs: RunInputs,
    operation: str,
    unmatched: bool,
    first: int,
    workers: int,
    size: int,
    limit: int,
    connection: Connection,
) -> None:
    """A worker's life: evaluate chunks `first`, `first + workers`, ... (at most `limit` of them when `limit` is
    set) and send each chunk's responses, or the first exception; then "retire" when its lane has chunks left
    (the parent forks a fresh worker for them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the workers
    total = len(inputs.subjects)
    try:
        numbers = range(first, math.ceil(total / size), workers)
        chunks = [_chunk(number, size, total) for number in (numbers[:limit] if limit else numbers)]
        indices = (index for chunk in chunks for index in chunk)
        evaluations = evaluate_subjects(inputs, operation, unmatched=unmatched, indices=indices)
        for chunk in chunks:
            batch = to_plain(responses for _, responses in itertools.islice(evaluations, len(chunk)))
            connection.send(("results", batch))
        if len(chunks) < len(numbers):
            connection.send(("retire", None))
    except Exception as error:
        with suppress(OSError):  # the parent is gone: nobody to tell
            connection.send(("error", Failure.of(error)))
    finally:
        connection.close()


class ParallelEvaluation:
    """`evaluate_subjects(inputs, operation, unmatched=unmatched)` over `workers` forked processes.

    The workers start at construction: create it before anything starts a thread (a progress bar does). Iterate
    once for `(subject, responses)` in subject order; use it as a context manager, so that leaving early stops
    the workers.

    With `recycle_after` N > 0, a worker evaluates at most N chunks, then exits and a freshly forked one takes its
    lane over: cel-expr-python keeps the arguments and results of every call of a Python-implemented CEL function
    (see `python -m bench.memory`), so a long-lived evaluator grows with the run. Recycling forks again while the
    results are read, so it is only safe while no other thread runs: the caller enables it only without a
    progress bar."""

    def __init__(
        self,
        inputs: RunInputs,
        operation: str,
        *,
        unmatched: bool = True,
        workers: int,
        size: int | None = None,
        recycle_after: int = 0,
    ) -> None:
        self._inputs = inputs
        self._operation = operation
        self._unmatched = unmatched
        self._recycle_after = recycle_after
        self._subjects: Sequence[Subject] = inputs.subjects
        total = len(self._subjects)
        self._size = size or chunk_size(total, workers)
        self._chunks = math.ceil(total / self._size)
        self._processes: list[BaseProcess] = []
        self._connections: list[Connection] = []
        self._started = self._finished = self._frozen = False
        workers = max(1, min(workers, self._chunks))
        self._workers = workers
        # Until `close`, the objects of the run so far (policies, resources) stay out of garbage collections, in
        # the workers (which then copy fewer pages) and in the parent (whose collections while it merges results
        # would otherwise walk them all, again and again).
        gc.freeze()
        self._frozen = True
        try:
            for worker in range(workers):
                process, receiver = self._fork(worker)
                self._processes.append(process)
                self._connections.append(receiver)
        except BaseException:
            self.close()
            raise

    def _fork(self, first: int) -> tuple[BaseProcess, Connection]:
        """A worker for the lane of chunk `first`, starting there."""
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        try:
            process = context.Process(
                target=_work,
                args=(
                    self._inputs,
                    self._operation,
                    self._unmatched,
                    first,
                    self._workers,
                    self._size,
                    self._recycle_after,
                    sender,
                ),
                name=f"celvern-worker-{first % self._workers + 1}",
                daemon=True,
            )
            process.start()
        except BaseException:
            receiver.close()
            raise
        finally:
            sender.close()  # the worker's copy is now the only one: its death reads as end of file
        return process, receiver

    def __iter__(self) -> Evaluations:
        if self._started:
            raise RuntimeError("a ParallelEvaluation can be iterated only once")
        self._started = True
        return self._results()

    def _results(self) -> Evaluations:
        total = len(self._subjects)
        for number in range(self._chunks):
            batch = self._receive(number)
            for index, responses in zip(_chunk(number, self._size, total), from_plain(batch), strict=True):
                yield self._subjects[index], responses
        self._finished = True

    def _receive(self, number: int) -> PlainBatch:
        """The results of chunk `number`, from the worker of its lane (replacing a worker that retired)."""
        worker = number % len(self._processes)
        process = self._processes[worker]
        try:
            kind, payload = self._connections[worker].recv()
            if kind == "retire":
                process.join(_EXIT_GRACE_SECONDS)
                if process.is_alive():
                    process.terminate()
                    process.join()
                process.close()
                self._connections[worker].close()
                process, self._connections[worker] = self._fork(number)
                self._processes[worker] = process
                kind, payload = self._connections[worker].recv()
        except EOFError:
            process.join(_EXIT_GRACE_SECONDS)
            workers = len(self._processes)
            raise WorkerDied(
                f"evaluation worker {worker + 1} of {workers} {_ending(process.exitcode)} before sending all its"
                " results; run again with --concurrency 1"
            ) from None
        if kind == "error":
            assert isinstance(payload, Failure)
            raise payload.rebuild()
        assert isinstance(payload, list)
        return payload

    def close(self) -> None:
        """Reap the workers, terminating those still running when the results were not all read."""
        for process in self._processes:
            if self._finished:
                process.join(_EXIT_GRACE_SECONDS)
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join()
        for connection in self._connections:
            connection.close()
        self._processes.clear()
        self._connections.clear()
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def __enter__(self) -> ParallelEvaluation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _ending(exit_code: int | None) -> str:
    if exit_code is None:
        return "stopped responding"
    if exit_code < 0:
        with suppress(ValueError):
            return f"was killed by {signal.Signals(-exit_code).name}"
        return f"was killed by signal {-exit_code}"
    return f"exited with code {exit_code}"
