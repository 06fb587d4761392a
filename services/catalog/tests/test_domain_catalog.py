"""The catalog's rules on an in-memory repository (tests/fakes.py): no database, no server."""

from __future__ import annotations

import pytest

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.catalog.domain.catalog import Catalog
from services.catalog.domain.change_feed import ChangeFeed
from services.catalog.domain.model import ProductDraft
from services.catalog.tests.fakes import InMemoryProductRepository

MUG = ProductDraft("MUG-01", "Mug", "A mug", Money("EUR", 6, 0), {"kind": "kitchen"})
TEA = ProductDraft("TEA-01", "Tea", "Green tea", Money("EUR", 12, 500_000_000), {"kind": "food"})


@pytest.fixture
def repository() -> InMemoryProductRepository:
    return InMemoryProductRepository()


@pytest.fixture
def catalog(repository: InMemoryProductRepository) -> Catalog:
    def no_rules(draft: ProductDraft, prefix: str) -> None:
        pass

    return Catalog(repository, ChangeFeed(repository), currency_code="EUR", validate_draft=no_rules)


async def test_a_created_product_is_read_back_by_its_name(catalog: Catalog) -> None:
    created = await catalog.create(MUG, "mug-01", "r1", "fp")
    assert created.name == "products/mug-01"
    assert (await catalog.get("products/mug-01")).draft == MUG


async def test_a_repeated_create_returns_the_first_product(
    catalog: Catalog, repository: InMemoryProductRepository
) -> None:
    first = await catalog.create(MUG, "", "r1", "fp")
    again = await catalog.create(MUG, "", "r1", "fp")
    assert again == first and len(repository.products) == 1


@pytest.mark.parametrize("name", ["mug-01", "products/", "products/a/b", "orders/o1"])
async def test_a_malformed_name_is_an_invalid_resource_name(catalog: Catalog, name: str) -> None:
    with pytest.raises(DomainError) as raised:
        await catalog.get(name)
    assert raised.value.kind is ErrorKind.INVALID_ARGUMENT
    assert raised.value.reason == "INVALID_RESOURCE_NAME"
    assert [v.field for v in raised.value.violations] == ["name"]


async def test_a_price_in_another_currency_is_refused(catalog: Catalog) -> None:
    with pytest.raises(DomainError) as raised:
        await catalog.create(ProductDraft("X", "X", "", Money("USD", 1, 0)), "", "r1", "fp")
    assert raised.value.reason == "CURRENCY_NOT_SUPPORTED"
    assert raised.value.violations[0].field == "product.price.currency_code"


async def test_an_update_with_a_stale_etag_is_aborted(catalog: Catalog) -> None:
    created = await catalog.create(MUG, "mug-01", "r1", "fp")
    await catalog.update(created.name, ProductDraft("", "Big mug", "", MUG.price), ["title"], "")
    with pytest.raises(DomainError) as raised:
        await catalog.update(
            created.name, ProductDraft("", "Small mug", "", MUG.price), ["title"], created.etag
        )
    assert raised.value.kind is ErrorKind.ABORTED and raised.value.reason == "ETAG_MISMATCH"


async def test_an_update_touches_only_the_masked_fields(catalog: Catalog) -> None:
    created = await catalog.create(MUG, "mug-01", "r1", "fp")
    updated = await catalog.update(
        created.name, ProductDraft("IGNORED", "Big mug", "", MUG.price), ["title"], created.etag
    )
    assert (updated.draft.title, updated.draft.sku) == ("Big mug", "MUG-01")
    with pytest.raises(DomainError) as raised:
        await catalog.update(created.name, MUG, ["create_time"], "")
    assert raised.value.reason == "INVALID_FIELD_MASK"


async def test_a_filter_and_an_order_select_and_sort_a_page(catalog: Catalog) -> None:
    await catalog.create(MUG, "mug-01", "r1", "fp")
    await catalog.create(TEA, "tea-01", "r2", "fp")
    found, next_token, total = await catalog.list("price < 20", "price desc", 1, "")
    assert [p.product_id for p in found] == ["tea-01"] and total == 2 and next_token
    rest, _, _ = await catalog.list("price < 20", "price desc", 1, next_token)
    assert [p.product_id for p in rest] == ["mug-01"]
    kitchen, _, _ = await catalog.list('labels.kind = "kitchen"', "", 10, "")
    assert [p.product_id for p in kitchen] == ["mug-01"]
