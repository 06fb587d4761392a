"""Testing seams: real databases per test, services on port 0, processes on loopback."""
