"""Catalog's metrics as a process: `rpc.server.duration` by method and status code on its
Prometheus endpoint, and with CATALOG_WORKERS=2 the supervisor's endpoint merges both workers'
series (each labelled with its worker), so no call goes uncounted."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from libs.runtime.processes import start_service

CALLS = 20


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


async def test_two_workers_report_every_call_through_one_endpoint(tmp_path: Path) -> None:
    catalog = await start_service(
        "services.catalog",
        {
            "CATALOG_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite3'}",
            "CATALOG_SECURITY": "insecure",
            "CATALOG_PORT": "0",
            "CATALOG_WORKERS": "2",
            "CATALOG_METRICS_PORT": "0",
        },
    )
    try:
        await catalog.wait_for_log("serving", count=2)
        supervisor = next(
            int(str(line["port"]))
            for line in catalog.log_lines
            if line.get("message") == "metrics" and "workers" in line
        )
        # New connections spread over the workers (SO_REUSEPORT): one channel per call.
        for index in range(CALLS):
            async with grpc.aio.insecure_channel(catalog.address) as channel:
                stub = pb_grpc.CatalogServiceStub(channel)
                if index % 2:
                    await stub.ListProducts(pb.ListProductsRequest(page_size=1))
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.GetProduct(pb.GetProductRequest(name="products/none"))
                    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        samples = await asyncio.to_thread(scrape, supervisor)
    finally:
        await catalog.terminate()

    up = {
        labels["worker"]: value for name, labels, value in samples if name == "emporium_worker_up"
    }
    assert up == {"0": 1.0, "1": 1.0}

    def count(method: str, code: str) -> float:
        return sum(
            value
            for name, labels, value in samples
            if name == "rpc_server_duration_milliseconds_count"
            and labels.get("rpc_method") == method
            and labels.get("rpc_grpc_status_code") == code
            and labels.get("service_name") == "catalog"
        )

    assert count("ListProducts", "0") == CALLS // 2
    assert count("GetProduct", "5") == CALLS // 2  # NOT_FOUND
    workers = {
        labels["worker"]
        for name, labels, _ in samples
        if name == "rpc_server_duration_milliseconds_count"
    }
    assert workers <= {"0", "1"} and workers
