"""Initial schema: patients, patient_identity, events (append-only), dead_letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_pk = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source_id", sa.String(200), nullable=False),
        sa.Column("gender", sa.String(16)),
        sa.Column("birth_year", sa.Integer),
        sa.Column("deceased", sa.Boolean, nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "patient_identity",
        sa.Column("patient_id", sa.String(64), sa.ForeignKey("patients.id"), primary_key=True),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("seq", _pk, primary_key=True, autoincrement=True),
        sa.Column("idem_key", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("source_id", sa.String(200), nullable=False),
        sa.Column("code", sa.String(100)),
        sa.Column("time", UTCDateTime),
        sa.Column("value", sa.Float),
        sa.Column("unit", sa.String(64)),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_events_patient_kind_code_time", "events",
                    ["patient_id", "kind", "code", "time"])
    op.create_index("ix_events_patient_time", "events", ["patient_id", "time"])
    op.create_table(
        "dead_letters",
        sa.Column("id", _pk, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("ix_events_patient_time", "events")
    op.drop_index("ix_events_patient_kind_code_time", "events")
    op.drop_table("events")
    op.drop_table("patient_identity")
    op.drop_table("patients")
