"""FHIR resources in write order per type (issue 13): ``fhir_current (res_type, seq)``, so an
export streams each type by keyset pages (``res_type = T AND seq > last ORDER BY seq``)
without sorting the whole table for every page.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_fhir_current_type_seq", "fhir_current", ["res_type", "seq"])


def downgrade() -> None:
    op.drop_index("ix_fhir_current_type_seq", "fhir_current")
