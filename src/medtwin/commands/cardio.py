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


def trial_cardio_cmd(
    scenario: str = typer.Option(..., help="hfref, haemorrhage, fluid-bolus, vasodilator, "
                                 "inotrope, beta-blocker or diuretic."),
    subjects: int = typer.Option(20, help="Virtual subjects drawn from the population."),
    duration: float = typer.Option(60.0, help="Seconds compared after the warm-up."),
    warmup: float = typer.Option(30.0, help="Seconds to reach steady state first."),
    seed: int = typer.Option(0, help="Seed of the virtual population, >= 0."),
    cv: list[str] = typer.Option(  # noqa: B008
        [], "--cv", help="Spread of a parameter 'name [unit]=cv' (repeat; replaces the "
        "default spreads of R_sys, E_ao, E_es_lvf, E_es_rvf, V_stressed and T_ref)."),
    out: Path | None = typer.Option(None, help="Per-subject table (CSV): baseline and "  # noqa: B008
                                    "scenario rows."),
    scheduler: str | None = typer.Option(
        None, help="Dask scheduler address (tcp://host:8786); default: a local cluster; "
        "'serial': no Dask."),
    workers: int = typer.Option(2, help="Workers of the local cluster."),
    chunk_size: int | None = typer.Option(None, help="Subjects per chunk."),
    progress: bool = typer.Option(True, help="Progress bar (only on a terminal)."),
) -> None:
    """Run a cardio scenario (e.g. a drug) on a virtual population and print its effects.

    Each subject runs unchanged (baseline) and under the scenario from the same steady state;
    the table gives each output's means, the paired difference with its 95% interval and the
    relative change. Chunks of subjects run on Dask (a local cluster unless --scheduler)."""
    import logging
    import sys

    from tqdm import tqdm

    from medtwin.core.cluster import dask_client
    from medtwin.jobs.kinds import cardio_trial_kind, run_cardio_spec

    spec: dict = {"scenario": scenario, "subjects": subjects, "duration": duration,
                  "warmup": warmup, "seed": seed}
    try:
        if cv:
            spreads = {}
            for item in cv:
                name, sep, value = item.rpartition("=")
                if not sep:
                    raise MedtwinError(f"--cv {item!r}: expected 'name [unit]=cv'")
                spreads[name.strip()] = float(value)
            spec["cv"] = spreads
        if chunk_size is not None and chunk_size < 1:
            raise MedtwinError(f"--chunk-size must be >= 1, got {chunk_size}")
        spec = cardio_trial_kind(None, None).validate(spec)
    except (MedtwinError, ValueError) as exc:
        fail(exc)
    if scheduler != "serial" and not logging.getLogger().isEnabledFor(logging.INFO):
        from medtwin.extras import require  # Dask: the trials extra

        require("distributed", "a trial on Dask (--scheduler serial needs none)")
        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        with tqdm(total=spec["subjects"], desc="cardio trial", unit="subject", file=sys.stderr,
                  disable=not (progress and sys.stderr.isatty()), leave=False) as bar:

            def tick(done: int, total: int) -> None:
                bar.update(done - bar.n)

            if scheduler == "serial":
                sc, table, effects = run_cardio_spec(spec, None, chunk_size=chunk_size,
                                                     on_progress=tick)
            else:
                with dask_client(scheduler, n_workers=workers) as client:
                    sc, table, effects = run_cardio_spec(spec, client, chunk_size=chunk_size,
                                                         on_progress=tick)
        if out is not None:
            table.to_csv(out, index=False)
    except (MedtwinError, ValueError, OSError) as exc:
        fail(exc)
    typer.echo(f"{sc.name}: {sc.description}; {spec['subjects']} virtual subjects, "
               f"{spec['duration']:g} s after a {spec['warmup']:g} s warm-up, seed {spec['seed']}")
    shown = effects.set_index("output").rename(columns={"ci_low": "95% low",
                                                        "ci_high": "95% high"})
    typer.echo(shown.round(3).to_string())
    typer.echo("difference = scenario - baseline (paired), means of the last 5 beats"
               + (f" -> {out}" if out is not None else ""))
