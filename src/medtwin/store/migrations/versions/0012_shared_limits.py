"""Shared request limits (issue 16): login throttling and anonymous-failure windows in the
store, so that every service worker (and replica) counts the same attempts.

``login_pairs`` holds per (account, address) the failures since the last success, the time of
the last attempt and when the pair last signed in (trusted); ``login_attempts`` every counted
attempt of the sliding windows (per address, per account from untrusted addresses);
``auth_failure_windows`` the open aggregation window of anonymous authentication failures per
(address, path class, reason).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_pairs",
        sa.Column("account", sa.String(320), primary_key=True),
        sa.Column("address", sa.String(64), primary_key=True),
        sa.Column("fails", sa.Integer, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
        sa.Column("trusted_at", sa.Float),
    )
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("for_account", sa.Boolean, nullable=False),
    )
    op.create_index("ix_login_attempts_address", "login_attempts", ["address", "at"])
    op.create_index("ix_login_attempts_account", "login_attempts", ["account", "at"])
    op.create_table(
        "auth_failure_windows",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("path_class", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(200), primary_key=True),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("first_at", UTCDateTime, nullable=False),
        sa.Column("last_at", UTCDateTime, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("auth_failure_windows")
    op.drop_index("ix_login_attempts_account", "login_attempts")
    op.drop_index("ix_login_attempts_address", "login_attempts")
    op.drop_table("login_attempts")
    op.drop_table("login_pairs")
