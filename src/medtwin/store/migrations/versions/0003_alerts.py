"""Alerts: raised alerts and what happened to them (acknowledged, resolved).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_pk = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", _pk, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("severity", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("raised_at", UTCDateTime, nullable=False),
        sa.Column("data_time", UTCDateTime),
    )
    op.create_index("ix_alerts_patient_rule", "alerts", ["patient_id", "rule"])
    op.create_table(
        "alert_events",
        sa.Column("id", _pk, primary_key=True, autoincrement=True),
        sa.Column("alert_id", _pk, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("by", sa.String(200)),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_alert_events_alert", "alert_events", ["alert_id"])


def downgrade() -> None:
    op.drop_index("ix_alert_events_alert", "alert_events")
    op.drop_table("alert_events")
    op.drop_index("ix_alerts_patient_rule", "alerts")
    op.drop_table("alerts")
