"""The kinds of job: how each checks its request and runs on Dask.

A kind's ``validate(spec)`` runs at submission (bad input is a 4xx then, never a failed job)
and returns the normalised spec that is stored; ``run(spec, ctx)`` runs it on ``ctx.client``
and returns a JSON-able result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.jobs.context import JobContext

Spec = dict[str, Any]


@dataclass(frozen=True)
class JobKind:
    """A kind of job: its name, its request check and its runner."""

    name: str
    validate: Callable[[Spec], Spec]
    run: Callable[[Spec, JobContext], dict[str, Any]]


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a table as JSON-able dicts (NaN and infinities become ``None``)."""
    return json.loads(frame.to_json(orient="records", double_precision=15))


def _n_workers(ctx: JobContext) -> int:
    try:
        return max(1, len(ctx.client.scheduler_info().get("workers", {})))
    except Exception:  # an unreachable scheduler shows up at submit time instead
        return 1


# --- in-silico glucose trials ------------------------------------------------------------
def _trial(spec: Spec) -> Any:
    from medtwin.trials.runner import Trial, load_cohort

    subjects = spec.get("subjects")
    if isinstance(subjects, str) and "," in subjects:  # "adult#001, adult#002": a list
        subjects = [s.strip() for s in subjects.split(",") if s.strip()]
    cohort = load_cohort(spec["cohort"], subjects)
    return Trial(cohort, spec["controller"], days=spec["days"], seed=spec["seed"])


def trial_kind(max_subjects: int, max_days: float) -> JobKind:
    """Glucose trials on a virtual cohort: the cohort split in chunks run on Dask."""

    def validate(spec: Spec) -> Spec:
        for key in ("cohort", "controller", "days", "seed"):
            if key not in spec:
                raise ValidationError("is required", where=key)
        if not (0 < float(spec["days"]) <= max_days):
            raise ValidationError(f"must be > 0 and <= {max_days:g} on this server",
                                  where="days")
        try:
            trial = _trial(spec)
        except NotFoundError as exc:  # an unknown controller or subject is bad input
            raise ValidationError(str(exc), where="trial") from None
        if len(trial.cohort) > max_subjects:
            raise ValidationError(f"{len(trial.cohort)} subjects selected; this server runs "
                                  f"at most {max_subjects} per job", where="subjects")
        return dict(spec)

    def run(spec: Spec, ctx: JobContext) -> dict[str, Any]:
        from distributed import as_completed

        from medtwin.trials.runner import gather_chunks, run_chunk

        trial = _trial(spec)
        n = len(trial.cohort)
        size = max(1, math.ceil(n / (2 * _n_workers(ctx))))
        futures = [ctx.client.submit(run_chunk, trial, a, min(a + size, n), pure=False)
                   for a in range(0, n, size)]
        parts, done = [], 0
        for f in as_completed(futures):
            part = f.result()
            parts.append(part)
            done += part.stop - part.start
            ctx.progress(done / n, f"{done} of {n} subjects")
        res = gather_chunks(trial, parts)
        table = res.table.reset_index().rename(columns={"index": "subject"})
        meta = {k: v if isinstance(v, int | float | str) else str(v)
                for k, v in res.meta.items()}
        return {"meta": meta, "rows": records(table)}

    return JobKind("trial", validate, run)


# --- hospital operations -------------------------------------------------------------------
def _ops_model(spec: Spec) -> Any:
    from medtwin.ops.loader import load_model, parse_model

    if spec.get("model_yaml") is not None:
        import yaml

        try:
            data = yaml.safe_load(spec["model_yaml"])
        except yaml.YAMLError as exc:
            raise ValidationError(f"not valid YAML: {exc}", where="model_yaml") from None
        return parse_model(data, "<model_yaml>")
    if spec.get("model") is None:
        raise ValidationError("give a shipped model name or the model's YAML", where="model")
    return load_model(spec["model"])


def _check_reps(spec: Spec, max_reps: int) -> None:
    reps = spec.get("reps")
    if reps is not None and not (isinstance(reps, int) and 2 <= reps <= max_reps):
        raise ValidationError(f"must be an integer from 2 to {max_reps}", where="reps")


def ops_kind(max_reps: int) -> JobKind:
    """Replications of a hospital operations model on Dask: KPI summary and per replication."""

    def validate(spec: Spec) -> Spec:
        _check_reps(spec, max_reps)
        model = _ops_model(spec)
        out = dict(spec)
        out.setdefault("seed", 0)
        out["reps"] = spec.get("reps") or min(model.replications, max_reps)
        return out

    def run(spec: Spec, ctx: JobContext) -> dict[str, Any]:
        from medtwin.ops.runner import run_replications

        model = _ops_model(spec)
        res = run_replications(
            model, spec["reps"], spec["seed"], progress=False, hourly=False, client=ctx.client,
            on_progress=lambda d, t: ctx.progress(d / t, f"{d} of {t} replications"))
        summary = res.summary().reset_index().rename(columns={"index": "kpi"})
        return {"model": model.name, "reps": spec["reps"], "seed": spec["seed"],
                "summary": records(summary), "per_rep": records(res.per_rep)}

    return JobKind("ops", validate, run)


def ops_optimise_kind(max_reps: int, max_candidates: int = 400) -> JobKind:
    """The cheapest resource mix meeting a service target, searched on Dask."""

    def validate(spec: Spec) -> Spec:
        from medtwin.ops.optimise import Target

        _check_reps(spec, max_reps)
        _ops_model(spec)
        if "target" not in spec:
            raise ValidationError("is required, e.g. 'p_within_4h>=0.95'", where="target")
        Target.parse(spec["target"])
        vary = spec.get("vary") or {}
        if not isinstance(vary, dict) or not all(
                isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(i, int) for i in v)
                for v in vary.values()):
            raise ValidationError("must map resource names to [low, high] integer pairs",
                                  where="vary")
        return {**spec, "vary": {k: list(v) for k, v in vary.items()},
                "reps": spec.get("reps") or 10, "seed": spec.get("seed", 0)}

    def run(spec: Spec, ctx: JobContext) -> dict[str, Any]:
        from medtwin.ops.optimise import optimise

        model = _ops_model(spec)
        ranges = {k: (int(v[0]), int(v[1])) for k, v in spec["vary"].items()} or None
        table = optimise(model, spec["target"], ranges, reps=spec["reps"], seed=spec["seed"],
                         max_candidates=max_candidates, client=ctx.client,
                         on_progress=lambda d, t: ctx.progress(d / t,
                                                               f"{d} of {t} candidates"))
        return {"model": model.name, "target": spec["target"], "table": records(table)}

    return JobKind("ops-optimise", validate, run)


# --- population PK -------------------------------------------------------------------------
def _pk_inputs(spec: Spec) -> tuple[Any, Any]:
    import io

    import yaml

    from medtwin.interop.nonmem import EventTable
    from medtwin.models.pk.spec import load_model, parse_model

    if spec.get("model_yaml") is not None:
        try:
            model = parse_model(yaml.safe_load(spec["model_yaml"]))
        except yaml.YAMLError as exc:
            raise ValidationError(f"not valid YAML: {exc}", where="model_yaml") from None
    elif spec.get("model"):
        model = load_model(spec["model"])
    else:
        raise ValidationError("give a shipped model name or the model's YAML", where="model")
    if not isinstance(spec.get("data_csv"), str):
        raise ValidationError("is required: the NONMEM-style event table as CSV text",
                              where="data_csv")
    try:
        table = EventTable.from_frame(pd.read_csv(io.StringIO(spec["data_csv"])))
    except (ValueError, pd.errors.ParserError) as exc:
        raise ValidationError(f"not a readable CSV event table: {exc}",
                              where="data_csv") from None
    return model, table


def pk_population_kind() -> JobKind:
    """A FOCE-I population fit whose objective evaluations run on Dask."""

    def validate(spec: Spec) -> Spec:
        _pk_inputs(spec)
        if spec.get("omega", "diagonal") not in ("diagonal", "full"):
            raise ValidationError("must be 'diagonal' or 'full'", where="omega")
        return {**spec, "omega": spec.get("omega", "diagonal")}

    def run(spec: Spec, ctx: JobContext) -> dict[str, Any]:
        from medtwin.twin.pk_population import fit_population

        model, table = _pk_inputs(spec)
        ctx.progress(0.0, "fitting (FOCE-I)")
        fit = fit_population(
            model, table, estimate=spec.get("estimate"), omega_structure=spec["omega"],
            client=ctx.client,
            # BFGS's iteration count is not known ahead: progress approaches 0.95 per batch
            on_batch=lambda k: ctx.progress(0.95 * (1 - 0.97 ** k), f"{k} gradient batches"))
        return {"model": model.name, "ofv": fit.estimator.ofv_,
                "converged": fit.estimator.converged_,
                "fixed_effects": records(fit.fixed_effects()),
                "random_effects": records(fit.random_effects()),
                "etas": records(fit.etas().reset_index())}

    return JobKind("pk-population", validate, run)


# --- cardiovascular trials -----------------------------------------------------------------
#: beat outputs summarised in a cardio trial's effect table, in display order
CARDIO_OUTPUTS = ("HR", "SBP", "DBP", "MAP", "mPAP", "CVP", "SV", "EF", "CO")


def cardio_trial_on(client: Any, scenario: Any, cohort: Any, *, duration: float,
                    warmup: float, chunk_size: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """:func:`~medtwin.twin.cardio.run_cardio_trial` with its chunks on an open Dask ``client``
    (or here, for ``client=None``), reporting ``on_progress(done, total)`` subjects as chunks
    finish. The same rows, in the same order, as ``run_cardio_trial`` over the whole cohort."""
    from medtwin.twin.cardio import run_cardio_trial

    ids = list(cohort.ids)
    n = len(ids)
    if chunk_size is None:
        workers = 1
        if client is not None:
            try:
                workers = max(1, len(client.scheduler_info().get("workers", {})))
            except Exception:  # an unreachable scheduler fails at submit instead
                workers = 1
        chunk_size = max(1, math.ceil(n / (2 * workers)))
    parts = [cohort.select(ids[a:a + chunk_size]) for a in range(0, n, chunk_size)]
    frames: list[pd.DataFrame | None] = [None] * len(parts)
    done = 0
    if client is None:
        for i, part in enumerate(parts):
            frames[i] = run_cardio_trial(scenario, part, duration=duration, warmup=warmup,
                                         scheduler="serial")
            done += len(part)
            if on_progress is not None:
                on_progress(done, n)
    else:
        from distributed import as_completed

        futures = [client.submit(run_cardio_trial, scenario, part, duration=duration,
                                 warmup=warmup, scheduler="serial", pure=False)
                   for part in parts]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for f in as_completed(futures):
                i = index[f.key]
                frames[i] = f.result()
                done += len(parts[i])
                if on_progress is not None:
                    on_progress(done, n)
        except BaseException:  # cancelled, or a chunk failed: stop the others
            client.cancel(futures)
            raise
    return pd.concat(frames, ignore_index=True)


def sort_cardio_rows(table: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """Rows subject by subject (in cohort order), each subject's baseline run first."""
    order = {s: i for i, s in enumerate(dict.fromkeys(table["subject"]))}
    key = table["subject"].map(order) * 2 + (table["run"] == scenario)
    return table.iloc[key.argsort(kind="stable")].reset_index(drop=True)


def cardio_effects(table: pd.DataFrame, scenario: str,
                   outputs: tuple[str, ...] = CARDIO_OUTPUTS) -> pd.DataFrame:
    """The scenario's effect on each output: baseline and scenario means over subjects, the
    mean paired difference (scenario - baseline) with its 95% t-interval (none for one
    subject), and the mean relative change [%]. One row an output."""
    from scipy import stats

    wide = table.pivot(index="subject", columns="run")
    n = len(wide)
    t = float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan
    rows = []
    for name in outputs:
        base, new = wide[(name, "baseline")], wide[(name, scenario)]
        diff = new - base
        mean = float(diff.mean())
        half = t * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
        rows.append({"output": name, "baseline": float(base.mean()),
                     "scenario": float(new.mean()), "difference": mean,
                     "ci_low": mean - half, "ci_high": mean + half,
                     "change [%]": float((diff / base).mean() * 100.0)})
    return pd.DataFrame(rows)


def _cardio_number(spec: Spec, key: str, default: float | None, low: float,
                   high: float | None, *, integer: bool = False, low_open: bool = False) -> Any:
    value = spec.get(key, default)
    if value is None:
        raise ValidationError("is required", where=key)
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not (
            (low < value if low_open else low <= value) and (high is None or value <= high)):
        kind = "an integer" if integer else "a number"
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        limit = "" if high is None else f" and <= {high:g} on this server"
        raise ValidationError(f"must be {kind} {bound}{limit}, got {value!r}", where=key)
    return int(value) if integer else float(value)


def _cardio_cohort(spec: Spec) -> Any:
    from medtwin.twin.cardio import virtual_population

    try:
        return virtual_population(spec["subjects"], cv=spec.get("cv"), seed=spec["seed"])
    except ValidationError as exc:  # an unknown parameter or a bad cv: name it under cv
        raise ValidationError(f"{exc.where}: {exc.message}", where="cv") from None


def run_cardio_spec(spec: Spec, client: Any, *, chunk_size: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None
                    ) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """A validated cardio-trial spec run on ``client`` (``None``: here): its scenario, the
    rows (subject by subject, baseline first) and the effect table (:func:`cardio_effects`).
    The job and ``medtwin trial cardio`` both run this."""
    from medtwin.twin.cardio import get_scenario

    sc = get_scenario(spec["scenario"])
    cohort = _cardio_cohort(spec)
    table = cardio_trial_on(client, sc, cohort, duration=spec["duration"],
                            warmup=spec["warmup"], chunk_size=chunk_size,
                            on_progress=on_progress)
    table = sort_cardio_rows(table, sc.name)
    return sc, table, cardio_effects(table, sc.name)


def cardio_trial_kind(max_subjects: int | None, max_seconds: float | None) -> JobKind:
    """A drug (or any) scenario over a virtual population of the cardiovascular twin, on Dask:
    each subject's baseline and scenario runs and the scenario's effect with 95% intervals.
    ``max_subjects`` and ``max_seconds`` (duration and warm-up each) are this server's limits
    (``None``: none)."""

    def validate(spec: Spec) -> Spec:
        from medtwin.twin.cardio import get_scenario

        unknown = sorted(set(spec) - {"scenario", "subjects", "duration", "warmup", "seed",
                                      "cv"})
        if unknown:
            raise ValidationError("unknown field", where=unknown[0])
        if not isinstance(spec.get("scenario"), str):
            raise ValidationError("is required: a shipped cardio scenario's name",
                                  where="scenario")
        try:
            get_scenario(spec["scenario"])
        except NotFoundError as exc:
            raise ValidationError(str(exc), where="scenario") from None
        if spec["scenario"] == "baseline":
            raise ValidationError("baseline is what every scenario is compared with; choose "
                                  "one that changes something", where="scenario")
        out: Spec = {"scenario": spec["scenario"]}
        out["subjects"] = _cardio_number(spec, "subjects", None, 1, max_subjects, integer=True)
        out["duration"] = _cardio_number(spec, "duration", 60.0, 0, max_seconds,
                                         low_open=True)
        out["warmup"] = _cardio_number(spec, "warmup", 30.0, 0, max_seconds)
        out["seed"] = _cardio_number(spec, "seed", 0, 0, 2**31 - 1, integer=True)
        cv = spec.get("cv")
        if cv is not None:
            if not isinstance(cv, dict) or not all(
                    isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                    and 0 <= v <= 1 for k, v in cv.items()):
                raise ValidationError("must map parameter labels to coefficients of variation "
                                      "in [0, 1]", where="cv")
            out["cv"] = {k: float(v) for k, v in cv.items()}
        _cardio_cohort(out)
        return out

    def run(spec: Spec, ctx: JobContext) -> dict[str, Any]:
        from medtwin.models.cardio.smith_ursino import SmithUrsino

        ctx.progress(0.0, f"0 of {spec['subjects']} subjects")
        sc, table, effects = run_cardio_spec(
            spec, ctx.client, on_progress=lambda d, t: ctx.progress(d / t,
                                                                    f"{d} of {t} subjects"))
        meta = {"scenario": sc.name, "description": sc.description, "rationale": sc.rationale,
                "subjects": spec["subjects"], "seed": spec["seed"],
                "duration [s]": spec["duration"], "warmup [s]": spec["warmup"],
                "model": SmithUrsino.name,
                "model_version": SmithUrsino.version,
                "summary": "means of the last 5 beats; difference = scenario - baseline "
                           "(paired), 95% t-interval over subjects"}
        return {"meta": meta, "rows": records(table), "effects": records(effects)}

    return JobKind("cardio-trial", validate, run)
