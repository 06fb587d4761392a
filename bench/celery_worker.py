"""The Celery side of bench/messaging.py: one task that notes when each message arrived.

Run by the benchmark as `celery -A bench.celery_worker worker --pool=solo ...`; when the
expected number of messages has arrived it writes their timings to the file it was told.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery
from kombu import Queue

QUEUE = "bench.celery"
app = Celery("bench", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    task_acks_late=True,  # ack after the task ran, like the Emporium consumer
    task_ignore_result=True,
    worker_prefetch_multiplier=256,
    broker_transport_options={"confirm_publish": True},
    task_queues=[Queue(QUEUE, routing_key=QUEUE, queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)

_arrivals: dict[str, list[tuple[float, float]]] = {}


@app.task(name="bench.record")  # type: ignore[untyped-decorator]
def record(sent: float, expected: int, out: str) -> None:
    arrivals = _arrivals.setdefault(out, [])
    arrivals.append((sent, time.time()))
    if len(arrivals) == expected:
        with open(out + ".tmp", "w") as file:
            json.dump(arrivals, file)
        os.replace(out + ".tmp", out)
