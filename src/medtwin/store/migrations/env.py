"""Alembic environment: runs on the connection medtwin hands in (see ``store.engine``)."""

from alembic import context

from medtwin.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  version_table_schema=context.config.attributes.get("schema"),
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
