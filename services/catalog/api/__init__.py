"""Catalog API: the gRPC servicer, mapping protobuf to the domain and back."""
