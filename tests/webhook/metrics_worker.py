"""One webhook "worker" process for the multiprocess metrics test in `test_server.py`.

prometheus_client decides at import time whether metrics live in memory or in files under
`PROMETHEUS_MULTIPROC_DIR`, so multiprocess mode can only be tested in a fresh process started with that variable.

    python -m tests.webhook.metrics_worker DENIED ALLOWED [--scrape]

sends DENIED reviews that `require-labels` denies and ALLOWED reviews that it allows to `/validate` of one app
(through httpx's ASGI transport), then with `--scrape` writes that app's `/metrics` page to stdout.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from tests.webhook.test_admission import REQUIRE_APP, body, pod, policy_set, review
from webhook.server import create_app
from webhook.state import Snapshot, StaticNamespaces, StaticPolicySource


async def work(denied: int, allowed: int, scrape: bool) -> str:
    app = create_app(StaticPolicySource(Snapshot(policy_set(REQUIRE_APP), version="test")), StaticNamespaces())
    documents = [review(uid=f"d-{n}") for n in range(denied)]
    documents += [review(pod(labels={"app": "web"}), uid=f"a-{n}") for n in range(allowed)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://celvern") as client:
        for document in documents:
            response = await client.post("/validate", content=body(document))
            response.raise_for_status()
        return (await client.get("/metrics")).text if scrape else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("denied", type=int)
    parser.add_argument("allowed", type=int)
    parser.add_argument("--scrape", action="store_true")
    arguments = parser.parse_args()
    print(asyncio.run(work(arguments.denied, arguments.allowed, arguments.scrape)), end="")


if __name__ == "__main__":
    main()
