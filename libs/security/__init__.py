"""Identity between services: SPIFFE ids from mTLS or from the mesh, and per-method policies."""
