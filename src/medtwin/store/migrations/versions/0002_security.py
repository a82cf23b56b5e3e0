"""Security: users, care teams, device API keys, the audit hash chain and its head anchor.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_pk = sa.BigInteger().with_variant(sa.Integer, "sqlite")
GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("username", sa.String(100), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("token_version", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "care_team_members",
        sa.Column("team", sa.String(100), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), primary_key=True),
    )
    op.create_index("ix_care_team_members_user", "care_team_members", ["user_id"])
    op.create_table(
        "care_team_patients",
        sa.Column("team", sa.String(100), primary_key=True),
        sa.Column("patient_id", sa.String(64), primary_key=True),
    )
    op.create_index("ix_care_team_patients_patient", "care_team_patients", ["patient_id"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", _pk, primary_key=True, autoincrement=False),
        sa.Column("time", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("source", sa.String(64)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", _pk, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
    op.drop_index("ix_care_team_patients_patient", "care_team_patients")
    op.drop_table("care_team_patients")
    op.drop_index("ix_care_team_members_user", "care_team_members")
    op.drop_table("care_team_members")
    op.drop_table("users")
