"""orders: takes orders, checks them against the catalog and holds their stock."""
