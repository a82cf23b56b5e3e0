"""Keyed (HMAC) audit chain, anchors and aggregated anonymous failures (issue 12).

Each audit entry records the id of the key its HMAC is under; the head records the key of
the last entry (so the first keyed append after this migration anchors the unkeyed prefix
outside the database). Entries written before stay as they are (``key_id`` NULL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32)))
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("key_id")
