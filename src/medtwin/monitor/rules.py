"""Alert rules on a patient's vitals (the NEWS2 band, thresholds, a rising-score trend) and
on glucose (low now, low soon by the CGM trend).

Each rule either fires (with a severity 1-3 and a message) or is clear; a clear rule
resolves its active alert. Severities: 1 advisory, 2 urgent, 3 emergency.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from medtwin.core import codes
from medtwin.core.findings import Finding as Finding  # the record type lives in core
from medtwin.models.glucose.constants import HYPO_THRESHOLD, SEVERE_HYPO_THRESHOLD
from medtwin.monitor.news2 import News2, Risk, Vitals

_SEVERITY = {Risk.LOW: 0, Risk.LOW_MEDIUM: 1, Risk.MEDIUM: 2, Risk.HIGH: 3}


#: how a vital is said to a clinician: its name and unit (the dashboard's tiles use the units)
VITAL_WORDS: dict[str, tuple[str, str]] = {
    "spo2": ("SpO2", "%"), "pulse": ("Pulse", "/min"), "systolic_bp": ("Systolic BP", "mmHg"),
    "respiration_rate": ("Respiratory rate", "/min"), "temperature": ("Temperature", "°C"),
}
_OP_WORDS = {"<": "below", "<=": "at or below", ">": "above", ">=": "at or above"}
#: severity 1-3 in words (advisory, urgent, emergency)
SEVERITY_WORDS = {1: "advisory", 2: "urgent", 3: "emergency"}


def _amount(value: float, unit: str) -> str:
    return f"{value:g}{unit}" if unit == "%" else f"{value:g} {unit}"


@dataclass(frozen=True, slots=True)
class Threshold:
    """Fire when a vital crosses a limit, e.g. SpO2 < 90."""

    rule: str
    item: str
    op: str
    limit: float
    severity: int = 2

    def check(self, v: Vitals) -> Finding:
        value = getattr(v, self.item)
        cmp: Callable[[float, float], bool] = {"<": operator.lt, "<=": operator.le,
                                               ">": operator.gt, ">=": operator.ge}[self.op]
        if value is not None and cmp(value, self.limit):
            name, unit = VITAL_WORDS.get(self.item, (self.item.replace("_", " "), ""))
            return Finding(self.rule, self.severity,
                           f"{name} {_amount(value, unit)}, {_OP_WORDS[self.op]} the alert "
                           f"limit of {_amount(self.limit, unit)}",
                           {"value": value, "limit": self.limit, "unit": unit})
        return Finding(self.rule, 0)


DEFAULT_THRESHOLDS = (
    Threshold("spo2-low", "spo2", "<", 90.0),
    Threshold("pulse-high", "pulse", ">", 130.0),
    Threshold("pulse-low", "pulse", "<", 40.0),
    Threshold("sbp-low", "systolic_bp", "<=", 90.0),
    Threshold("rr-high", "respiration_rate", ">=", 25.0),
)


def news2_finding(score: News2) -> Finding:
    """The NEWS2 band as an alert: low-medium 1, medium 2, high 3; low is clear."""
    sev = _SEVERITY[score.risk]
    if not sev:
        return Finding("news2", 0)
    partial = f" (partial: {score.explain()})" if score.partial else ""
    return Finding("news2", sev, f"NEWS2 {score.total}: {score.risk.value} risk{partial}",
                   score.to_dict())


def trend_finding(now: News2, before: int | None, *, rise: int = 3) -> Finding:
    """Fire when NEWS2 rose by ``rise`` or more since the earlier total ``before``."""
    if before is not None and now.total - before >= rise:
        return Finding("news2-rising", 1, f"NEWS2 rose from {before} to {now.total}",
                       {"before": before, "now": now.total})
    return Finding("news2-rising", 0)


def evaluate(vitals: Vitals, score: News2, earlier: int | None = None,
             thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS) -> list[Finding]:
    """Every rule's finding for one patient now."""
    return [news2_finding(score), trend_finding(score, earlier),
            *(t.check(vitals) for t in thresholds)]


GLUCOSE_CODES = codes.GLUCOSE_CODES


def glucose_findings(readings: list[tuple[datetime, float]], *, low: float = HYPO_THRESHOLD,
                     urgent: float = SEVERE_HYPO_THRESHOLD, horizon: float = 30.0,
                     window: timedelta = timedelta(minutes=20)) -> list[Finding]:
    """CGM/glucose rules, as CGM devices alert: low now (< 70, urgent < 54 mg/dL), and low
    soon (the least-squares trend of the last ``window`` projects < ``low`` within
    ``horizon`` minutes). ``readings`` are (time, mg/dL), oldest first."""
    if not readings:
        return []
    t_last, last = readings[-1]
    sev = 3 if last < urgent else (2 if last < low else 0)
    now = Finding("glucose-low", sev, f"glucose {last:g} mg/dL" if sev else "",
                  {"value": last} if sev else {})
    recent = [(t, v) for t, v in readings if t >= t_last - window]
    soon = Finding("glucose-low-soon", 0)
    if len(recent) >= 3 and last >= low:
        x = np.array([(t - t_last).total_seconds() / 60.0 for t, _ in recent])
        y = np.array([v for _, v in recent])
        slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
        projected = last + slope * horizon
        if slope < 0 and projected < low:
            soon = Finding("glucose-low-soon", 2,
                           f"glucose {last:g} mg/dL falling {slope:.1f} mg/dL/min: "
                           f"{projected:.0f} in {horizon:g} min",
                           {"value": last, "slope": slope, "projected": projected})
    return [now, soon]
