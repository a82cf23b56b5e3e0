"""The event store: append-only, idempotent; SQLite by default, PostgreSQL by URL."""
