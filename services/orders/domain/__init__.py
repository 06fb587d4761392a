"""Orders domain: the order, its use cases and the ports to catalog, inventory and storage."""
