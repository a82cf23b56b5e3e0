"""Record versions, writers and data-quality flags on events (issue 12).

``events.quality`` holds a data-quality flag (``future-dated`` ...) for a reading that was
kept as evidence but must never be used as "latest" or scored; NULL is a trusted reading.
The index on (kind, source_id) makes the append-only check (which writer may add a version
of which record) one indexed look-up per batch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from medtwin.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("quality", sa.String(32), nullable=True))  # no copy
    op.create_index("ix_events_kind_source", "events", ["kind", "source_id"])
    # readings already stored with a time in the future (a device clock written in 9999
    # before this version) are quarantined now, as they would be if they arrived today
    cutoff = datetime.now(UTC) + timedelta(minutes=5)  # interop.quality's default tolerance
    op.get_bind().execute(
        sa.text("UPDATE events SET quality = 'future-dated' WHERE kind = 'observation' "
                "AND quality IS NULL AND time > :cutoff")
        .bindparams(sa.bindparam("cutoff", value=cutoff, type_=UTCDateTime())))


def downgrade() -> None:
    op.drop_index("ix_events_kind_source", "events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("quality")
