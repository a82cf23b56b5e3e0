"""Every FHIR resource as received, versioned, with its search index (issue 13).

``fhir_versions`` keeps every version (append-only; a logical delete is a version without
content), ``fhir_current`` the current version of each resource with its patient
compartment, ``fhir_search`` the search-parameter values of current versions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "fhir_versions",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_updated", UTCDateTime, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("content", sa.Text),
    )
    op.create_index("ux_fhir_versions_key", "fhir_versions", ["res_type", "res_id", "version"],
                    unique=True)
    op.create_index("ix_fhir_versions_updated", "fhir_versions", ["last_updated"])
    op.create_table(
        "fhir_current",
        sa.Column("res_type", sa.String(64), primary_key=True),
        sa.Column("res_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("seq", _SEQ, nullable=False),
        sa.Column("last_updated", UTCDateTime, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64)),
    )
    op.create_index("ix_fhir_current_patient", "fhir_current", ["patient_id", "res_type"])
    op.create_index("ix_fhir_current_type_updated", "fhir_current",
                    ["res_type", "last_updated"])
    op.create_index("ix_fhir_current_seq", "fhir_current", ["seq"])
    op.create_table(
        "fhir_search",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("sys", sa.String(255)),
        sa.Column("value", sa.String(255)),
        sa.Column("raw", sa.String(255)),
        sa.Column("lo", UTCDateTime),
        sa.Column("hi", UTCDateTime),
    )
    op.create_index("ix_fhir_search_res", "fhir_search", ["res_type", "res_id", "param"])
    op.create_index("ix_fhir_search_value", "fhir_search", ["param", "value", "res_type"])


def downgrade() -> None:
    op.drop_table("fhir_search")
    op.drop_table("fhir_current")
    op.drop_table("fhir_versions")
