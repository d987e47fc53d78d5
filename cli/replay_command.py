"""`celvern replay`: send recorded AdmissionReviews to a running webhook, as the API server would.

Why it exists: to try a webhook without a cluster. A laptop demo (`celvern serve` with the library in Audit, then
`celvern replay examples/admission-reviews`) fills the decision history and the dashboard; an operator can replay
reviews captured from a cluster (`--dumpPayload`-style logs) against a new policy set before rolling it out.

Each file holds one AdmissionReview (JSON or YAML; a directory is read recursively, in name order). Reviews are
POSTed to `/mutate` (with `--mutate`) and `/validate`, over HTTPS with the webhook's CA (`--cacert`) or plain HTTP
for a development server. The command prints one line per review with the answer, and exits 0 when every review got
an answer (denials included), 1 when some did not, 2 for bad input.
"""

from __future__ import annotations

import http.client
import ssl
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from cli.output import console

SUFFIXES = (".json", ".yaml", ".yml")
TIMEOUT_SECONDS = 10.0
"""The API server's default webhook timeout."""


@dataclass(frozen=True, slots=True)
class Review:
    path: Path
    body: bytes
    operation: str
    resource: str


@dataclass(frozen=True, slots=True)
class Answer:
    review: Review
    status: int
    allowed: bool | None
    message: str
    warnings: tuple[str, ...]
    audits: int = 0
    """How many policies audited a failure (the answer's auditAnnotations)."""


def _files(paths: tuple[str, ...]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        else:
            yield path


def load_review(path: Path) -> Review:
    """One AdmissionReview file; raises click.ClickException naming the file for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise click.ClickException(f"{path}: cannot read: {error}") from None
    try:
        document = orjson.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=yaml.CSafeLoader)
    except (orjson.JSONDecodeError, yaml.YAMLError) as error:
        raise click.ClickException(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        raise click.ClickException(f"{path}: not an AdmissionReview (kind: AdmissionReview expected)")
    request = document.get("request")
    if not isinstance(request, dict):
        raise click.ClickException(f"{path}: request: an AdmissionReview needs a request object")
    resource_field = request.get("resource")
    resource: dict[str, Any] = resource_field if isinstance(resource_field, dict) else {}
    operation = str(request.get("operation") or "")
    namespace = str(request.get("namespace") or "")
    name = str(request.get("name") or "")
    described = f"{resource.get('resource', '?')} {namespace + '/' if namespace else ''}{name}"
    return Review(path, orjson.dumps(document), operation, described)


class _Client:
    """One keep-alive connection to the webhook, reopened after an error."""

    def __init__(self, server: str, context: ssl.SSLContext | None, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise click.BadParameter(f"expected http(s)://HOST:PORT, got {server!r}", param_hint="--server")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        self._prefix = parsed.path.rstrip("/")
        self._context = context
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._connection

    def post(self, path: str, body: bytes) -> tuple[int, Any]:
        connection = self._connect()
        try:
            connection.request("POST", self._prefix + path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        try:
            return response.status, orjson.loads(data)
        except orjson.JSONDecodeError:
            return response.status, None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _answer(review: Review, status: int, payload: Any) -> Answer:
    response = payload.get("response") if isinstance(payload, dict) else None
    if status != 200 or not isinstance(response, dict):
        message = payload.get("message") if isinstance(payload, dict) else None
        return Answer(review, status, None, str(message or f"HTTP {status}"), ())
    status_field = response.get("status")
    result: dict[str, Any] = status_field if isinstance(status_field, dict) else {}
    warnings = tuple(str(w) for w in response.get("warnings") or ())
    annotations = response.get("auditAnnotations")
    audits = len(annotations) if isinstance(annotations, dict) else 0
    allowed = bool(response.get("allowed"))
    return Answer(review, status, allowed, str(result.get("message") or ""), warnings, audits)


@click.command("replay")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--server", required=True, help="The webhook's base URL, e.g. https://127.0.0.1:9443.")
@click.option(
    "--cacert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA certificate the webhook's serving certificate chains to (celvern serve writes ca.crt in --tls-dir).",
)
@click.option("--insecure", is_flag=True, help="Do not verify the webhook's certificate (development only).")
@click.option("--mutate", is_flag=True, help="POST each review to /mutate before /validate, as the API server does.")
@click.option("--repeat", type=click.IntRange(1, 10_000), default=1, show_default=True, help="Send everything N times.")
@click.option("--timeout", type=click.FloatRange(0.1, 60.0), default=TIMEOUT_SECONDS, show_default=True)
def replay_command(
    paths: tuple[str, ...],
    server: str,
    cacert: str | None,
    insecure: bool,
    mutate: bool,
    repeat: int,
    timeout: float,
) -> None:
    """Send the AdmissionReviews in PATHS (files or directories) to a running webhook and print its answers."""
    reviews = [load_review(path) for path in _files(paths)]
    if not reviews:
        raise click.UsageError("no AdmissionReview files (.json, .yaml) found in the given paths")
    context: ssl.SSLContext | None = None
    if server.startswith("https:"):
        context = ssl.create_default_context(cafile=cacert)
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    client = _Client(server, context, timeout)
    answers: list[Answer] = []
    failures = 0
    started = time.perf_counter()
    try:
        for _ in range(repeat):
            for review in reviews:
                try:
                    if mutate:
                        client.post("/mutate", review.body)
                    status, payload = client.post("/validate", review.body)
                except (OSError, http.client.HTTPException, ssl.SSLError) as error:
                    failures += 1
                    answers.append(Answer(review, 0, None, f"no answer: {error}", ()))
                    continue
                answer = _answer(review, status, payload)
                failures += answer.allowed is None
                answers.append(answer)
    finally:
        client.close()
    elapsed = time.perf_counter() - started
    _print(answers[: len(reviews)] if repeat > 1 else answers)
    denied = sum(1 for a in answers if a.allowed is False)
    warned = sum(1 for a in answers if a.warnings)
    audited = sum(1 for a in answers if a.allowed and a.audits)
    click.echo(
        f"\n{len(answers)} reviews sent in {elapsed:.2f} s: {denied} denied, {warned} with warnings, "
        f"{audited} audited, {failures} without an answer",
        err=True,
    )
    sys.exit(1 if failures else 0)


def _print(answers: list[Answer]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False, pad_edge=False)
    for column in ("REVIEW", "OPERATION", "RESOURCE", "ANSWER", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for answer in answers:
        if answer.allowed is None:
            verdict = "[red]error[/red]"
        elif not answer.allowed:
            verdict = "[red]denied[/red]"
        elif answer.warnings:
            verdict = "[yellow]warned[/yellow]"
        elif answer.audits:
            verdict = f"[yellow]allowed, {answer.audits} audited[/yellow]"
        else:
            verdict = "[green]allowed[/green]"
        message = answer.message or "; ".join(answer.warnings)
        table.add_row(  # text from the webhook and the files is shown as it is, never read as rich markup
            Text(answer.review.path.name),
            Text(answer.review.operation),
            Text(answer.review.resource),
            verdict,
            Text(message[:300]),
        )
    console().print(table)
