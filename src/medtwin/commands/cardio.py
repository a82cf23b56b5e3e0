"""``medtwin simulate cardio``: the cardiovascular twin's what-if scenarios on the CLI."""

from __future__ import annotations

from pathlib import Path

import typer

from medtwin.commands._common import fail
from medtwin.core.errors import MedtwinError


def simulate_cardio_cmd(
    scenario: str = typer.Option("baseline", help="baseline, hfref, haemorrhage, fluid-bolus, "
                                 "vasodilator, inotrope, beta-blocker or diuretic."),
    duration: float = typer.Option(90.0, help="Seconds simulated after the warm-up."),
    warmup: float = typer.Option(30.0, help="Seconds to reach steady state first."),
    subjects: int = typer.Option(1, help="Virtual subjects (1: the resting adult)."),
    seed: int = typer.Option(0, help="Seed of the virtual population."),
    set_: list[str] = typer.Option(  # noqa: B008
        [], "--set", help="Parameter change 'name [unit]=value' (repeat)."),
    out: Path | None = typer.Option(None, help="Beat-to-beat table of the scenario (CSV)."),  # noqa: B008
) -> None:
    """Simulate the Smith 2004 / Ursino 1998 circulation, heartbeat by heartbeat, under a
    scenario next to the unchanged baseline, and print the last beats' averages."""
    import pandas as pd

    from medtwin.models.cardio.beats import BEAT_NAMES
    from medtwin.models.cardio.parameters import cardio_cohort
    from medtwin.twin.cardio import run_scenario, virtual_population

    try:
        changes = {}
        for item in set_:
            name, sep, value = item.rpartition("=")
            if not sep:
                raise MedtwinError(f"--set {item!r}: expected 'name [unit]=value'")
            changes[name.strip()] = float(value)
        if subjects > 1:
            cohort = virtual_population(subjects, seed=seed)
            for k, v in changes.items():
                cohort = cohort.with_values(k, v)
        else:
            cohort = cardio_cohort(1, changes=changes)
        what = run_scenario(scenario, cohort, duration=duration, warmup=warmup)
        table = what.summary()
        if out is not None:
            r = what.result
            rows = [dict(subject=s, beat=b, **dict(zip(BEAT_NAMES, r.beats[i, b], strict=True)))
                    for i, s in enumerate(r.subjects) for b in range(int(r.n_beats[i]))]
            pd.DataFrame(rows).to_csv(out, index=False)
    except (MedtwinError, ValueError, OSError) as exc:
        fail(exc)
    cols = ["SBP", "DBP", "MAP", "HR", "SV", "EF", "CO", "CVP", "mPAP"]
    typer.echo(f"{what.scenario.name}: {what.scenario.description}")
    typer.echo(table.groupby("run", sort=False)[cols].mean().round(2).to_string())
