"""The interactive docs in a real browser (Debian's chromium, driven by Playwright): /docs lists
every operation of /openapi.json, "Try it out" on GET /v1/products answers 200 on the page, the
Authorize dialog gets a token from /v1/token, and GraphiQL opens at /graphql. Nothing is
fetched from outside the gateway. Screenshots go to the test's output directory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from services.gateway.tests.fleet import Fleet, running_fleet

CHROMIUM = Path("/usr/bin/chromium")  # Debian's, installed by tools/setup
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """Where a human finds the screenshots: Bazel's undeclared outputs, else the test's tmp."""
    return Path(os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR", tmp_path))


@pytest.fixture
async def fleet(amqp_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path, amqp_url, payments=False) as started:
        yield started


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run tools/setup (it installs Debian's chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def offline_page(browser: Browser, fleet: Fleet, outside: list[str]) -> Page:
    """A page that may load only from the gateway; anything else is refused and recorded."""
    page = await browser.new_page(viewport={"width": 1280, "height": 2000})

    async def only_the_gateway(route: Route) -> None:
        if route.request.url.startswith(fleet.url):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_the_gateway)
    return page


async def test_docs_list_every_operation_and_try_it_out(
    browser: Browser, fleet: Fleet, outputs: Path
) -> None:
    async with fleet.client() as http:
        spec = (await http.get("/openapi.json")).json()
    operations = sum(len(verbs) for verbs in spec["paths"].values())
    outside: list[str] = []
    page = await offline_page(browser, fleet, outside)
    await page.goto(f"{fleet.url}/docs")
    blocks = page.locator(".opblock")
    await expect(blocks.first).to_be_visible()
    await expect(blocks).to_have_count(operations)
    tags = await page.locator(".opblock-tag").all_inner_texts()
    assert any(tag.startswith("catalog v1") for tag in tags), tags

    products = page.locator(
        ".opblock-get", has=page.locator(".opblock-summary-path[data-path='/v1/products']")
    )
    await products.locator(".opblock-summary").click()
    await products.locator(".try-out__btn").click()
    await products.locator(".execute").click()
    status = products.locator(".live-responses-table .response .response-col_status")
    await expect(status.first).to_have_text("200")
    await page.screenshot(path=str(outputs / "docs.png"), full_page=True)
    assert outside == []


async def test_docs_authorize_with_a_password_and_call_as_that_user(
    browser: Browser, fleet: Fleet, outputs: Path
) -> None:
    outside: list[str] = []
    page = await offline_page(browser, fleet, outside)
    await page.goto(f"{fleet.url}/docs")
    await page.locator(".auth-wrapper .authorize").click()
    oauth2 = page.locator(".dialog-ux .auth-container", has_text="OAuth2, password")
    await oauth2.locator("#oauth_username").fill("staff")
    await oauth2.locator("#oauth_password").fill(fleet.secret("staff"))
    async with page.expect_response(f"{fleet.url}/v1/token") as answered:
        await oauth2.locator("button.authorize").click()
    token = await answered.value
    assert token.status == 200, await token.text()
    await page.screenshot(path=str(outputs / "docs-authorize.png"))
    await page.locator(".dialog-ux .close-modal").click()

    stock = page.locator(
        ".opblock-get",
        has=page.locator(".opblock-summary-path[data-path='/v1/inventory/items']"),
    )
    await stock.locator(".opblock-summary").click()
    await stock.locator(".try-out__btn").click()
    await stock.locator(".execute").click()
    status = stock.locator(".live-responses-table .response .response-col_status")
    await expect(status.first).to_have_text("200")  # staff only: the token was sent
    await page.screenshot(path=str(outputs / "docs-authorized.png"))
    assert outside == []


async def test_graphiql_opens_at_graphql(browser: Browser, fleet: Fleet, outputs: Path) -> None:
    outside: list[str] = []
    page = await offline_page(browser, fleet, outside)
    await page.goto(f"{fleet.url}/graphql")
    await expect(page.locator(".graphiql-container")).to_be_visible()
    await page.locator(".graphiql-execute-button").click()  # the sample query: listProducts
    await expect(page.locator(".graphiql-response")).to_contain_text("products/")
    await page.screenshot(path=str(outputs / "graphiql.png"))
    assert outside == []
