"""What the launcher's banner tells a new user to paste, and what tests/e2e/test_front_door_curl.py
runs exactly."""

from __future__ import annotations

from pathlib import Path

_JSON_FIELD = "python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'"


def curl_walkthrough(gateway: str, secrets: Path) -> list[str]:
    """Shell lines a new user can paste: stock as staff, sign up, page through products,
    order with an Idempotency-Key, watch it over SSE until CONFIRMED, read it with its products.
    tests/e2e/test_front_door_curl.py runs exactly these lines."""
    json_header = "-H 'Content-Type: application/json'"
    return [
        f"G=http://{gateway}",
        f'STAFF=$(curl -s $G/v1/token {json_header} -d "{{\\"grant_type\\": \\"password\\", '
        f'\\"username\\": \\"staff\\", \\"password\\": \\"$(cat {secrets}/staff)\\"}}" '
        f"| {_JSON_FIELD} access_token)",
        f'curl -s $G/v1/inventory/items:adjust -H "Authorization: Bearer $STAFF" {json_header} '
        '-d \'[{"item": "inventory/items/mug-01", "delta": 10}]\'; echo',
        f'curl -s "$G/v1/users?user_id=ann" {json_header} '
        '-d \'{"password": "correct horse battery"}\'; echo',
        f'TOKEN=$(curl -s $G/v1/token {json_header} -d \'{{"grant_type": "password", '
        f'"username": "ann", "password": "correct horse battery"}}\' | {_JSON_FIELD} access_token)',
        'curl -si "$G/v1/products?page_size=2" | grep -i \'^link:\'    # rel="next": the next page',
        f'ORDER=$(curl -s $G/v1/orders -H "Authorization: Bearer $TOKEN" '
        '-H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" '
        f'{json_header} -d \'{{"customer": "customers/ann", "lines": [{{"product": '
        f'"products/mug-01", "quantity": 2}}]}}\' | {_JSON_FIELD} name)',
        'curl -sN "$G/v1/$ORDER:watch" -H "Authorization: Bearer $TOKEN"    '
        "# Server-Sent Events until CONFIRMED",
        'curl -s "$G/v1/$ORDER?view=FULL" -H "Authorization: Bearer $TOKEN"; echo    '
        "# with each line's productDetails",
    ]
