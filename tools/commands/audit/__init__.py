"""The balance audit (`tools/audit`, or `python -m tools.commands.audit`): proves that money and
stock balance, reading each service's public API and the payment provider's ledger."""
