"""`medtwin news2`: the NEWS2 score from given values or a patient's latest vitals."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer

from medtwin.commands._common import DB_HELP, JSON_HELP, echo_json, fail, open_store
from medtwin.core.errors import MedtwinError
from medtwin.monitor.news2 import ITEMS, Vitals, news2
from medtwin.monitor.vitals import latest_vitals

_MEASURED = ("respiration_rate", "spo2", "systolic_bp", "pulse", "consciousness",
             "temperature")

app = typer.Typer(add_completion=False)


@app.command("news2")
def news2_cmd(
    patient: str | None = typer.Option(None, "--patient", help="Score the patient's latest "
                                       "vitals in the store."),
    rr: float | None = typer.Option(None, "--rr", help="Respiration rate (/min)."),
    spo2: float | None = typer.Option(None, "--spo2", help="SpO2 (%)."),
    scale: int = typer.Option(1, "--scale", help="SpO2 scale: 1, or 2 for hypercapnic "
                              "respiratory failure (target 88-92%)."),
    oxygen: bool | None = typer.Option(None, "--oxygen/--air", help="On supplemental oxygen?"),
    sbp: float | None = typer.Option(None, "--sbp", help="Systolic blood pressure (mmHg)."),
    pulse: float | None = typer.Option(None, "--pulse", help="Pulse (/min)."),
    acvpu: str | None = typer.Option(None, "--acvpu", help="A, C, V, P or U."),
    temp: float | None = typer.Option(None, "--temp", help="Temperature (Celsius)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    at: datetime | None = typer.Option(None, "--at", help="Score the record as it stood at "
                                       "this ISO time (default: now); each vital counts only "
                                       "if it is current then."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print the NEWS2 total, each item's points and the risk band."""
    try:
        when = None
        if patient:
            ref = (at if at is None or at.tzinfo else at.replace(tzinfo=UTC)) or \
                datetime.now(UTC)
            with open_store(db) as store:
                vitals, when = latest_vitals(store, patient, spo2_scale=scale, at=ref)
            if when is not None and all(getattr(vitals, f) is None for f in _MEASURED):
                if as_json:
                    echo_json({"scored": False, "at": ref, "newest_reading": when,
                               "stale": list(vitals.stale)})
                typer.echo(f"NEWS2 not scored: no current vitals at {ref.isoformat()} (newest "
                           f"reading {when.isoformat()}; stale: {', '.join(vitals.stale)}); "
                           "pass --at TIME to score the record as it stood then", err=True)
                raise typer.Exit(1)
        else:
            vitals = Vitals(respiration_rate=rr, spo2=spo2, on_oxygen=oxygen, systolic_bp=sbp,
                            pulse=pulse, consciousness=acvpu, temperature=temp,
                            spo2_scale=scale)
        result = news2(vitals)
    except MedtwinError as exc:
        fail(exc)
    if as_json:
        out = result.to_dict()
        out["at"] = when.isoformat() if when else None
        typer.echo(json.dumps(out, indent=2))
        return
    for item in ITEMS:
        shown = result.points.get(item)
        typer.echo(f"  {item:15s} {'-' if shown is None else shown}")
    partial = f" (partial: {result.explain()})" if result.partial else ""
    typer.echo(f"NEWS2 {result.total}: {result.risk.value} risk{partial}")
