"""Audit entries as FHIR R4 AuditEvent resources (for export to a SIEM or a FHIR server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from medtwin.security.audit import AuditEntry

_NS = uuid.UUID("0b6d3f7e-52b1-4c55-8a6c-1f1e3b0d9a77")
_ACTIONS = {"read": "R", "research": "R", "write": "C", "create": "C", "update": "U",
            "disable": "U", "delete": "D"}
_OUTCOMES = {"success": "0", "not-found": "4", "failure": "4", "denied": "8"}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"


def to_audit_event(entry: AuditEntry) -> dict[str, Any]:
    """One AuditEvent (R4): type, action, time, outcome, the agent and the patient."""
    login = entry.action in {"login", "refresh", "authenticate"}
    event_type = ({"system": DCM, "code": "110114", "display": "User Authentication"}
                  if login else {"system": REST, "code": "rest", "display": "RESTful Operation"})
    agent: dict[str, Any] = {"who": {"display": entry.actor}, "requestor": True}
    if entry.role:
        agent["role"] = [{"text": entry.role}]
    if entry.source:
        agent["network"] = {"address": entry.source, "type": "2"}
    res: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid5(_NS, f"{entry.seq}|{entry.time.isoformat()}")),
        "type": event_type,
        "action": _ACTIONS.get(entry.action, "E"),
        "recorded": entry.time.astimezone(UTC).isoformat(),
        "outcome": _OUTCOMES.get(entry.outcome, "4"),
        "agent": [agent],
        "source": {"observer": {"display": "medtwin"}},
        "entity": [{"what": {"display": entry.resource}}],
    }
    if entry.outcome != "success" or entry.detail:
        res["outcomeDesc"] = f"{entry.outcome}{': ' + entry.detail if entry.detail else ''}"
    if entry.patient_id:
        res["entity"].append({"what": {"reference": f"Patient/{entry.patient_id}"},
                              "type": {"system": "http://terminology.hl7.org/CodeSystem/"
                                       "audit-entity-type", "code": "1", "display": "Person"}})
    if entry.seq is not None:
        res["extension"] = [{"url": "https://medtwin.dev/fhir/StructureDefinition/audit-seq",
                             "valueInteger": entry.seq}]
    return res


def audit_bundle(entries: Iterable[AuditEntry]) -> dict[str, Any]:
    """A collection Bundle of AuditEvents."""
    return {"resourceType": "Bundle", "type": "collection",
            "timestamp": datetime.now(UTC).isoformat(),
            "entry": [{"fullUrl": f"urn:uuid:{e['id']}", "resource": e}
                      for e in map(to_audit_event, entries)]}
