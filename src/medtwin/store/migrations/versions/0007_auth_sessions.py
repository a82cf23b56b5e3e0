"""Refresh-token sessions and patient-binding approvals (issue 12).

``auth_sessions`` holds one row per sign-in: the hash of the one refresh token that may be
used next (rotation), and when the session was revoked (logout, reuse of an old refresh
token). ``patient_bindings`` holds requests to bind a user to a patient, which a second
admin approves; ``users.created_by`` names the admin who made a user, so that an admin
cannot approve their own request through an account they created. Login throttling stays
in memory (a later issue moves it to Redis).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("created_by", sa.String(36), nullable=True))  # no copy
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("refresh_hash", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("refreshed_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revoked_reason", sa.String(32)),
    )
    op.create_index("ix_auth_sessions_user", "auth_sessions", ["user_id"])
    op.create_table(
        "patient_bindings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(36), nullable=False),
        sa.Column("requested_at", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(36)),
        sa.Column("decided_at", UTCDateTime),
    )
    op.create_index("ix_patient_bindings_user", "patient_bindings", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_patient_bindings_user", "patient_bindings")
    op.drop_table("patient_bindings")
    op.drop_index("ix_auth_sessions_user", "auth_sessions")
    op.drop_table("auth_sessions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("created_by")
