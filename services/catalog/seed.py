"""Sample products for local runs (CATALOG_SEED_SAMPLE_PRODUCTS=true)."""

from __future__ import annotations

from decimal import Decimal

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind
from services.catalog.domain.catalog import Catalog
from services.catalog.domain.model import ProductDraft

SAMPLES = (
    (
        "SUNGLASSES-01",
        "Sunglasses",
        "Add a modern touch to your outfits.",
        "19.99",
        {"category": "accessories", "color": "black"},
    ),
    (
        "TANKTOP-01",
        "Tank Top",
        "Perfectly cropped cotton tank.",
        "18.99",
        {"category": "clothing", "color": "white"},
    ),
    (
        "WATCH-01",
        "Watch",
        "This gold-tone watch goes with everything.",
        "109.99",
        {"category": "accessories", "color": "gold"},
    ),
    (
        "LOAFERS-01",
        "Loafers",
        "A neat addition to your summer wardrobe.",
        "89.99",
        {"category": "footwear", "color": "brown"},
    ),
    (
        "HAIRDRYER-01",
        "Hairdryer",
        "Lightweight and powerful.",
        "24.99",
        {"category": "beauty", "color": "pink"},
    ),
    (
        "CANDLEHOLDER-01",
        "Candle Holder",
        "Rustic tea-light holder.",
        "18.99",
        {"category": "home", "color": "white"},
    ),
    (
        "SALTPEPPER-01",
        "Salt & Pepper Shakers",
        "Add some flavor to your kitchen.",
        "18.49",
        {"category": "kitchen", "color": "silver"},
    ),
    (
        "BAMBOOJAR-01",
        "Bamboo Glass Jar",
        "Airtight bamboo glass jar.",
        "5.49",
        {"category": "kitchen", "color": "natural"},
    ),
    (
        "MUG-01",
        "Mug",
        "A simple mug with a mustard interior.",
        "8.99",
        {"category": "kitchen", "color": "yellow"},
    ),
)


async def seed(catalog: Catalog) -> int:
    """Creates the samples that are missing, named after their SKU (`products/mug-01`), so the
    README's walk-through can name them. Returns how many it created."""
    created = 0
    for sku, title, description, price, labels in SAMPLES:
        draft = ProductDraft(
            sku,
            title,
            description,
            Money.from_decimal(catalog.currency_code, Decimal(price)),
            labels,
        )
        try:
            await catalog.create(draft, sku.lower(), request_id="", fingerprint="")
            created += 1
        except DomainError as error:
            if error.kind is not ErrorKind.ALREADY_EXISTS:
                raise
    return created
