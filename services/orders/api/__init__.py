"""Orders API: the gRPC servicer."""
