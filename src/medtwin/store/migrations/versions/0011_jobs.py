"""Durable jobs (issue 16): long work (trials, ops replications and optimisation, population
PK fits) queued in the store and run on Dask by whichever service worker claims it.

One row per job: what was asked (``kind``, ``spec``), who asked, its status and progress, its
result or error, and the lease of the worker running it (``worker``, ``heartbeat_at``), so a
job survives a restart and a dead worker's job is taken up again (or failed after
``attempts`` tries), never silently lost.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("message", sa.String(200)),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("worker", sa.String(100)),
        sa.Column("heartbeat_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
    )
    op.create_index("ix_jobs_status", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_owner", "jobs", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner", "jobs")
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_table("jobs")
