"""Bulk Data export jobs of the FHIR API (issue 13): their state and their NDJSON files.

``fhir_export_jobs`` holds one row per ``$export`` kick-off: who asked (only they may poll
it or fetch its files), what was asked (level, types, ``_since``, the patients the caller
reached at kick-off, whether the output is de-identified), the status and progress, so that a
job survives a restart (an unfinished one is taken up again). ``fhir_export_files`` holds
the output, one NDJSON part per row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_export_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.String(100)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("transaction_time", UTCDateTime, nullable=False),
    )
    op.create_index("ix_fhir_export_jobs_owner", "fhir_export_jobs", ["owner"])
    op.create_table(
        "fhir_export_files",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("fhir_export_jobs.id"),
                  primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fhir_export_files")
    op.drop_index("ix_fhir_export_jobs_owner", "fhir_export_jobs")
    op.drop_table("fhir_export_jobs")
