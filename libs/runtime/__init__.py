"""The service runtime: configuration, errors, the gRPC server and its lifecycle."""
