"""Problems found in FHIR input, reported the way FHIR servers do (OperationOutcome)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medtwin.core.errors import ValidationError


@dataclass(frozen=True, slots=True)
class FhirIssue:
    """One problem: where it is (bundle entry, resource, element) and what is wrong."""

    message: str
    element: str = ""
    entry: int | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    severity: str = "error"
    code: str = "structure"
    source: str | None = None

    @property
    def where(self) -> str:
        """A human path such as ``bundle.json entry[3] Observation/abc .valueQuantity.value``."""
        parts = []
        if self.source:
            parts.append(self.source)
        if self.entry is not None:
            parts.append(f"entry[{self.entry}]")
        if self.resource_type:
            parts.append(f"{self.resource_type}/{self.resource_id}" if self.resource_id
                         else self.resource_type)
        if self.element:
            parts.append(self.element)
        return " ".join(parts) or "input"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json`` output)."""
        return asdict(self)

    def to_outcome_issue(self) -> dict[str, Any]:
        """One ``OperationOutcome.issue``."""
        expr = []
        base = f"Bundle.entry[{self.entry}].resource" if self.entry is not None else (
            self.resource_type or "")
        if self.element or base:
            expr = [".".join(p for p in (base, self.element) if p)]
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": str(self),
        }
        if expr:
            out["expression"] = expr
        return out


def operation_outcome(issues: list[FhirIssue]) -> dict[str, Any]:
    """An OperationOutcome resource (JSON) listing ``issues``; 'all ok' when there are none."""
    if not issues:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational",
                       "diagnostics": "all ok"}],
        }
    return {"resourceType": "OperationOutcome", "issue": [i.to_outcome_issue() for i in issues]}


class FhirImportError(ValidationError):
    """FHIR input was rejected; ``issues`` says where and why. Nothing of it was stored."""

    def __init__(self, issues: list[FhirIssue], *, summary: str | None = None) -> None:
        self.issues = list(issues)
        head = summary or f"{len(self.issues)} problem(s) in FHIR input"
        lines = [head] + [f"  - {i}" for i in self.issues[:20]]
        if len(self.issues) > 20:
            lines.append(f"  ... and {len(self.issues) - 20} more")
        super().__init__("\n".join(lines))

    def outcome(self) -> dict[str, Any]:
        """The rejection as an OperationOutcome resource."""
        return operation_outcome(self.issues)
