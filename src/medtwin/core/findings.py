"""What a rule or a twin says about a patient now: the record every layer passes up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Finding:
    """What one rule says now: its name, severity (0 = clear, 1 advisory, 2 urgent,
    3 emergency), the message a clinician reads and machine-readable detail."""

    rule: str
    severity: int  # 0 = clear
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
