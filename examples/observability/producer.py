"""Sends a few jobs inside a trace, then shows what the worker recorded: the traces it
continued, and its /metrics (start the worker first: see README)."""

from __future__ import annotations

import json
import os
import urllib.request

from tasks import SPANS, charge, invoice, provider, tenant

from conveyor import TaskFailed

METRICS = f"http://127.0.0.1:{os.environ.get('METRICS_PORT', '9100')}/metrics"


def main() -> None:
    tracer = provider.get_tracer("shop.web")
    tenant.set("acme")  # what a web app's request middleware would do
    with tracer.start_as_current_span("POST /checkout") as request:
        jobs = [invoice.delay(1), charge.delay(2), charge.delay(3)]
    trace_id = f"0x{request.get_span_context().trace_id:032x}"

    for job in jobs:
        try:
            print("result:", job.result(timeout=30))
        except TaskFailed as exc:
            print("failed:", exc)

    # The worker's run spans (written before its results) are children of this process's
    # send spans: one trace.
    spans = [json.loads(line) for line in SPANS.read_text().splitlines()]
    ours = [s for s in spans if s["context"]["trace_id"] == trace_id]
    for name in sorted({s["name"] for s in ours}):
        print(f"trace {trace_id[:10]}…: {sum(s['name'] == name for s in ours)} x {name}")

    with urllib.request.urlopen(METRICS, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("conveyor_jobs_total{"):
                print("metric:", line)


if __name__ == "__main__":
    main()
