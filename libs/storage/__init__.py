"""Storage: one SQLAlchemy (async core) code path over embedded SQLite and PostgreSQL."""
