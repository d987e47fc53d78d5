"""Fixtures for engine tests: compile policies from YAML snippets and evaluate them against a resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine.evaluation import EvaluationContext
from engine.loader import parse_text
from engine.matching import NamespaceLabels
from engine.policy_set import build_policy_set, evaluate
from engine.request import request_for_resource
from engine.results import PolicyResponse

Evaluator = Callable[..., list[PolicyResponse]]


@pytest.fixture
def run() -> Evaluator:
    """run(policy_text, resource, operation=..., exceptions=(...)) -> the responses of every compiled policy."""

    def _run(
        policy_text: str,
        resource: dict[str, Any],
        *,
        operation: str = "CREATE",
        exceptions: tuple[str, ...] = (),
        namespace_labels: dict[str, str] | None = None,
    ) -> list[PolicyResponse]:
        documents = [d for text in (policy_text, *exceptions) for d in parse_text(text, "<test>")]
        policy_set = build_policy_set(documents)
        context = EvaluationContext(
            request=request_for_resource(resource, operation=operation),
            namespace=NamespaceLabels(namespace_labels or {}),
        )
        return evaluate(policy_set, context)

    return _run
