"""Twin snapshots: versioned, append-only beliefs of each patient's twin.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_pk = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "twin_snapshots",
        sa.Column("id", _pk, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("twin_time", UTCDateTime, nullable=False),
        sa.Column("data_cutoff", _pk),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.UniqueConstraint("patient_id", "version", name="uq_twin_snapshots_patient_version"),
    )
    op.create_index("ix_twin_snapshots_patient_time", "twin_snapshots",
                    ["patient_id", "twin_time"])


def downgrade() -> None:
    op.drop_index("ix_twin_snapshots_patient_time", "twin_snapshots")
    op.drop_table("twin_snapshots")
