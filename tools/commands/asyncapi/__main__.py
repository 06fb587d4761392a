"""Writes the fleet's AsyncAPI 3.0 document (the one the gateway serves at /asyncapi.json),
generated from the messaging contract, for the docs: tools/asyncapi [--out PATH]."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from libs.messaging.contract import ContractError, fleet_contract
from services.gateway.asyncapi import build_asyncapi

DEFAULT_OUT = Path("build/docs/asyncapi.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/asyncapi", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    arguments = parser.parse_args(argv)
    try:
        contract = fleet_contract()
    except ContractError as error:
        print(f"error: the messaging contract: {error}", file=sys.stderr)
        return 2
    document = build_asyncapi(contract, title="Emporium messaging", version="1")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(document, indent=2) + "\n")
    print(
        f"wrote {arguments.out}: {len(document['channels'])} channels,"
        f" {len(document['operations'])} operations,"
        f" {len(document['components']['messages'])} messages"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
