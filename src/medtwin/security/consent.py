"""Research consent: read from the FHIR Consent records stored in a patient's timeline."""

from __future__ import annotations

from datetime import UTC, datetime

from medtwin.core.errors import NotFoundError
from medtwin.core.records import Consent
from medtwin.store.event_store import EventStore


def has_research_consent(store: EventStore, patient_id: str, *,
                         at: datetime | None = None) -> bool:
    """Whether the patient's latest consent about research permits it now (default: no)."""
    at = at or datetime.now(UTC)
    try:
        records = store.timeline(patient_id, kinds=["consent"])
    except NotFoundError:
        return False
    research = [c for c in records if isinstance(c, Consent) and (
        c.scope == "research" or {"HRESCH", "CLINTRCH", "BIORCH"} & set(c.purposes))]
    if not research:
        return False
    latest = max(research, key=lambda c: c.time or datetime.min.replace(tzinfo=UTC))
    return latest.permits_research(at)
