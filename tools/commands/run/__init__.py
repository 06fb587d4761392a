"""The dev launcher: every service as a process on loopback, like production, in one command."""
