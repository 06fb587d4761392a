"""Locust users for the shop: shoppers through the gateway (HTTP/JSON, SSE) and a gRPC user over
the generated async stubs. Run it with tools/load (headless, or --web), or with locust itself:

    locust -f tools/commands/load/locustfile.py --host http://127.0.0.1:8080

Shoppers browse most (page through products, open one), some sign up and order with an
Idempotency-Key and watch the order over Server-Sent Events until payment confirms it, a few
cancel. Think times of 1 to 5 s between steps. Settings come from the environment (tools/load
sets them): EMPORIUM_LOAD_STAFF_PASSWORD stocks the products when the test starts;
EMPORIUM_LOAD_GRPC_TARGET (host:port of catalog) and EMPORIUM_LOAD_CERTS (the operator's mTLS
certificates; unset means plaintext) are for the gRPC user, which runs only when the target is
set.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any

import gevent
from locust import HttpUser, User, between, events, tag, task
from locust.env import Environment

from services.catalog.seed import SAMPLES
from tools.commands.load.grpc_user import GrpcCalls

# The sample products tools/run seeds (CATALOG_SEED_SAMPLE_PRODUCTS), by name.
PRODUCTS = tuple(f"products/{sample[0].lower()}" for sample in SAMPLES)
STOCK = 1_000_000
WATCH_SECONDS = 30.0


def stock_the_shelves(environment: Environment, **_kwargs: Any) -> None:
    """As staff, make sure no order fails for want of stock (the load is about the system,
    not about selling out)."""
    password = os.environ.get("EMPORIUM_LOAD_STAFF_PASSWORD")
    if not password or environment.host is None:
        return
    import requests  # Locust's own HTTP client library

    host = environment.host.rstrip("/")
    reply = requests.post(
        f"{host}/v1/token",
        json={"grant_type": "password", "username": "staff", "password": password},
        timeout=10,
    )
    reply.raise_for_status()
    staff = reply.json()["access_token"]
    adjust: Any = [{"item": f"inventory/items/{p.split('/')[1]}", "delta": STOCK} for p in PRODUCTS]
    stocked = requests.post(
        f"{host}/v1/inventory/items:adjust",
        json=adjust,
        headers={"Authorization": f"Bearer {staff}"},
        timeout=10,
    )
    stocked.raise_for_status()


events.test_start.add_listener(stock_the_shelves)  # type: ignore[no-untyped-call]


class Shopper(HttpUser):
    """A customer of the shop, through the front door."""

    weight = 10
    wait_time = between(1, 5)

    def on_start(self) -> None:
        self.user_id = f"load-{uuid.uuid4().hex[:12]}"
        self.password = uuid.uuid4().hex
        self.token = ""
        self.orders: list[str] = []

    # -- browsing: anonymous, most of the traffic ---------------------------------------------

    @tag("browse")
    @task(6)
    def browse_products(self) -> None:
        """The first page, then a few more through Link: rel="next", as a client pages."""
        url: str | None = "/v1/products?page_size=5"
        for _ in range(random.randint(1, 3)):
            if url is None:
                break
            with self.client.get(url, name="/v1/products", catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
                    return
                url = response.links.get("next", {}).get("url")
            gevent.sleep(random.uniform(0.2, 1.0))  # reading the page

    @tag("browse")
    @task(3)
    def view_product(self) -> None:
        product = random.choice(PRODUCTS)
        self.client.get(f"/v1/{product}", name="/v1/products/{product}")

    # -- buying: signed up, with a token ------------------------------------------------------

    def _sign_in(self) -> bool:
        if self.token:
            return True
        signed_up = self.client.post(
            f"/v1/users?user_id={self.user_id}",
            json={"password": self.password},
            name="/v1/users",
        )
        if signed_up.status_code != 200:
            return False
        issued = self.client.post(
            "/v1/token",
            json={"grant_type": "password", "username": self.user_id, "password": self.password},
            name="/v1/token",
        )
        if issued.status_code != 200:
            return False
        self.token = issued.json()["access_token"]
        return True

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _place_order(self) -> str | None:
        lines = [
            {"product": product, "quantity": random.randint(1, 3)}
            for product in random.sample(PRODUCTS, random.randint(1, 2))
        ]
        with self.client.post(
            "/v1/orders",
            json={"customer": f"customers/{self.user_id}", "lines": lines},
            headers={**self._auth(), "Idempotency-Key": str(uuid.uuid4())},
            name="/v1/orders",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return None
            name = str(response.json()["name"])
        self.orders.append(name)
        return name

    @tag("order")
    @task(2)
    def order_and_watch(self) -> None:
        """Order, then follow the order over SSE until payment settles it; the time to
        CONFIRMED is reported as its own entry."""
        if not self._sign_in():
            return
        name = self._place_order()
        if name is None:
            return
        started = time.perf_counter()
        state = ""
        failure: str | None = None
        try:
            with self.client.get(
                f"/v1/{name}:watch",
                headers={**self._auth(), "Accept": "text/event-stream"},
                stream=True,
                timeout=WATCH_SECONDS,
                name="/v1/orders/{order}:watch (SSE)",
                catch_response=True,
            ) as response:
                if response.status_code != 200:
                    failure = f"{response.status_code}"
                    response.failure(failure)
                else:
                    for line in response.iter_lines(decode_unicode=True):
                        if line and line.startswith("data: "):
                            state = json.loads(line.removeprefix("data: ")).get("state", state)
                        elif line == "event: error":
                            failure = "the stream ended with an error event"
                    if failure:
                        response.failure(failure)
        except Exception as error:  # a cut stream: report it, do not kill the user
            failure = repr(error)
        if failure is None and state not in ("ORDER_STATE_CONFIRMED", "ORDER_STATE_CANCELLED"):
            failure = f"the watch ended at {state or 'no state'}"
        events.request.fire(  # type: ignore[no-untyped-call]
            request_type="SSE",
            name="order placed -> settled",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=RuntimeError(failure) if failure else None,
            context={},
        )

    @tag("order")
    @task(1)
    def order_then_cancel(self) -> None:
        """Change of mind: order, then cancel. A cancel that loses the race to confirmation
        is the domain saying no (a 4xx with its reason), not a failure of the system."""
        if not self._sign_in():
            return
        name = self._place_order()
        if name is None:
            return
        gevent.sleep(random.uniform(0.0, 1.0))
        with self.client.post(
            f"/v1/{name}:cancel",
            json={},
            headers={**self._auth(), "Idempotency-Key": str(uuid.uuid4())},
            name="/v1/orders/{order}:cancel",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                response.success()
            elif response.status_code in (400, 409) and "reason" in response.text:
                response.success()  # refused by the order's state: the right answer
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @tag("order")
    @task(1)
    def my_orders(self) -> None:
        if not self.orders:
            return
        name = random.choice(self.orders)
        self.client.get(f"/v1/{name}", headers=self._auth(), name="/v1/orders/{order}")


class CatalogGrpcUser(User):
    """Drives catalog directly over gRPC with the generated async stubs (in a child process:
    see tools/commands/load/grpc_user.py). Needs EMPORIUM_LOAD_GRPC_TARGET."""

    weight = 2
    wait_time = between(0.5, 2)
    _calls: GrpcCalls | None = None  # one child process per Locust process

    def on_start(self) -> None:
        if CatalogGrpcUser._calls is None:
            CatalogGrpcUser._calls = GrpcCalls(self.environment)
        self.calls = CatalogGrpcUser._calls

    @task(3)
    def get_product(self) -> None:
        self.calls.call("GetProduct", name=random.choice(PRODUCTS))

    @task(1)
    def list_products(self) -> None:
        self.calls.call("ListProducts", page_size=10)


def stop_grpc_worker(**_kwargs: Any) -> None:
    if CatalogGrpcUser._calls is not None:
        CatalogGrpcUser._calls.close()


events.quitting.add_listener(stop_grpc_worker)  # type: ignore[no-untyped-call]
