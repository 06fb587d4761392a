"""Development certificates for local mTLS."""
