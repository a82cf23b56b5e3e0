"""``medtwin simulate cardio``: the cardiovascular twin's what-if scenarios on the CLI."""

from __future__ import annotations

from pathlib import Path

import typer

from medtwin.commands._common import (
    FORCE_HELP,
    JSON_HELP,
    USAGE,
    check_outputs,
    echo_json,
    fail,
    records,
)
from medtwin.core.errors import MedtwinError, ValidationError


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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Simulate the Smith 2004 / Ursino 1998 circulation, heartbeat by heartbeat, under a
    scenario next to the unchanged baseline, and print the last beats' averages."""
    import pandas as pd

    from medtwin.models.cardio.beats import BEAT_NAMES
    from medtwin.models.cardio.parameters import cardio_cohort
    from medtwin.twin.cardio import run_scenario, virtual_population

    check_outputs(force, out=out)
    changes = _pairs(set_, "--set", "name [unit]=value")
    try:
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
    except (MedtwinError, OSError) as exc:
        fail(exc)
    cols = ["SBP", "DBP", "MAP", "HR", "SV", "EF", "CO", "CVP", "mPAP"]
    means = table.groupby("run", sort=False)[cols].mean()
    if as_json:
        echo_json({"scenario": what.scenario.name, "description": what.scenario.description,
                   "subjects": subjects, "duration [s]": duration, "warmup [s]": warmup,
                   "means": records(means, "run"), "out": out})
        return
    typer.echo(f"{what.scenario.name}: {what.scenario.description}")
    typer.echo(means.round(2).to_string())


def _pairs(items: list[str], option: str, form: str) -> dict[str, float]:
    """``name [unit]=number`` items of a repeated option; a malformed one is a usage error."""
    found = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            if not sep:
                raise ValueError
            found[name.strip()] = float(value)
        except ValueError:
            fail(ValidationError(f"{item!r}: expected '{form}'", where=option), USAGE)
    return found


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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
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

    check_outputs(force, out=out)
    spec: dict = {"scenario": scenario, "subjects": subjects, "duration": duration,
                  "warmup": warmup, "seed": seed}
    if cv:
        spec["cv"] = _pairs(cv, "--cv", "name [unit]=cv")
    if chunk_size is not None and chunk_size < 1:
        fail(ValidationError(f"must be >= 1, got {chunk_size}", where="--chunk-size"))
    try:
        spec = cardio_trial_kind(None, None).validate(spec)
    except MedtwinError as exc:
        fail(exc)
    except ValueError as exc:  # the spec's own checks: bad input
        fail(exc, USAGE)
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
    except (MedtwinError, OSError) as exc:
        fail(exc)
    if as_json:
        echo_json({"scenario": sc.name, "description": sc.description,
                   "subjects": spec["subjects"], "duration [s]": spec["duration"],
                   "warmup [s]": spec["warmup"], "seed": spec["seed"],
                   "difference": "scenario - baseline (paired), means of the last 5 beats",
                   "effects": records(effects), "out": out})
        return
    typer.echo(f"{sc.name}: {sc.description}; {spec['subjects']} virtual subjects, "
               f"{spec['duration']:g} s after a {spec['warmup']:g} s warm-up, seed {spec['seed']}")
    shown = effects.set_index("output").rename(columns={"ci_low": "95% low",
                                                        "ci_high": "95% high"})
    typer.echo(shown.round(3).to_string())
    typer.echo("difference = scenario - baseline (paired), means of the last 5 beats"
               + (f" -> {out}" if out is not None else ""))
