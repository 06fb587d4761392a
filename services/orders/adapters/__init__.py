"""Orders adapters: storage and the gRPC clients of catalog and inventory."""
