"""Read and validate a model file (YAML) into a :class:`~medtwin.ops.schema.Model`.

Every rule is checked before anything runs; a broken rule raises
:class:`~medtwin.ops.errors.ModelFileError` naming the file, the key path, the line and the fix.
Shipped examples can be named instead of a path (``nelson``, ``ed_inpatient``, ``mm3`` ...).
"""

from __future__ import annotations

import copy
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from medtwin.ops.context import Where, mapping, need, number, unknown_keys
from medtwin.ops.distributions import parse_distribution
from medtwin.ops.errors import ModelNotFoundError
from medtwin.ops.schema import (
    EXIT,
    UNITS_PER_HOUR,
    Activity,
    ArrivalStream,
    Model,
    PatientClass,
    Resource,
    Step,
)
from medtwin.ops.yamlio import load_yaml, plain

ALIASES = {"nelson": "nelson_treatment_centre", "treatment_centre": "nelson_treatment_centre",
           "ed": "ed_inpatient"}
TOP_KEYS = {"name", "description", "source", "time_unit", "clock", "run", "resources",
            "activities", "classes", "arrivals", "kpis", "census"}


def shipped_models() -> list[str]:
    """Names of the example models shipped in the package."""
    folder = importlib_resources.files("medtwin.ops") / "models"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve(name_or_path: str | Path) -> Path:
    """A path to a model file, from a path or the name of a shipped example."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    name = ALIASES.get(str(name_or_path), str(name_or_path))
    shipped = Path(str(importlib_resources.files("medtwin.ops") / "models" / f"{name}.yaml"))
    if shipped.exists():
        return shipped
    if p.exists():
        return p
    raise ModelNotFoundError(f"no model file or shipped model '{name_or_path}'; give a path to a "
                             f"YAML file or one of {shipped_models()}")


def load_model(name_or_path: str | Path) -> Model:
    """Load and validate a model file (or a shipped example by name)."""
    path = resolve(name_or_path)
    return parse_model(load_yaml(path.read_text(encoding="utf-8"), file=str(path)), str(path))


def parse_model(data: Any, file: str = "<model>") -> Model:
    """Validate a model description (as read from YAML, or a plain dict) and build it."""
    top = Where(file, "", data)
    mapping(top, "the model file")
    unknown_keys(top, TOP_KEYS)
    unit = data.get("time_unit", "minutes")
    if unit not in UNITS_PER_HOUR:
        top.child("time_unit").fail(f"unknown time unit '{unit}'", "use 'minutes' or 'hours'")
    resources = _resources(need(top, "resources", "the model"))
    activities = _activities(need(top, "activities", "the model"), resources)
    classes = _classes(need(top, "classes", "the model"), activities, resources)
    arrivals = _arrivals(need(top, "arrivals", "the model"), classes)
    run = _run(top.child("run")) if "run" in data else {}
    clock = _clock(top.child("clock")) if "clock" in data else {}
    targets = _targets(top.child("kpis")) if "kpis" in data else {}
    census = _census(top.child("census"), activities) if "census" in data else {}
    return Model(name=str(data.get("name", Path(file).stem)), time_unit=unit,
                 resources=resources, activities=activities, classes=classes,
                 arrivals=arrivals, targets=targets, census=census,
                 description=str(data.get("description", "")), file=file,
                 raw=plain(data), **run, **clock)


def _resources(w: Where) -> dict[str, Resource]:
    mapping(w, "resources")
    if not w.value:
        w.fail("no resources", "add at least one resource, e.g. 'beds: {capacity: 10}'")
    out = {}
    for name in w.value:
        rw = w.child(name)
        if isinstance(rw.value, int) and not isinstance(rw.value, bool):
            out[name] = Resource(name, number(rw, positive=True, integer=True))
            continue
        mapping(rw, f"resource '{name}'")
        unknown_keys(rw, {"capacity", "roster", "cost_per_hour", "kind"})
        cost = number(rw.child("cost_per_hour"), nonneg=True) if "cost_per_hour" in rw.value \
            else 0.0
        if "roster" in rw.value:
            ros = rw.child("roster")
            if not isinstance(ros.value, list) or len(ros.value) not in (24, 168):
                ros.fail("a roster lists the count on duty for each hour (24 or 168 numbers)",
                         "give 24 hourly counts (00:00-01:00 first) or 168 for a week")
            counts = tuple(number(ros.child(i), nonneg=True, integer=True)
                           for i in range(len(ros.value)))
            if max(counts) == 0:
                ros.fail("nobody is ever on duty", "put at least 1 in some hour")
            out[name] = Resource(name, max(counts), counts, cost)
        else:
            cap = number(need(rw, "capacity", f"resource '{name}'"), positive=True, integer=True)
            out[name] = Resource(name, cap, None, cost)
    return out


def _activities(w: Where, resources: dict[str, Resource]) -> dict[str, Activity]:
    mapping(w, "activities")
    out = {}
    for name in w.value:
        aw = w.child(name)
        mapping(aw, f"activity '{name}'")
        unknown_keys(aw, {"resource", "duration", "hold", "patience", "balk_at", "releases"})
        res = need(aw, "resource", f"activity '{name}'")
        if res.value not in resources:
            res.fail(f"activity '{name}' uses unknown resource '{res.value}'",
                     f"use one of {sorted(resources)} or add '{res.value}' under resources")
        dur = parse_distribution(need(aw, "duration", f"activity '{name}'"))
        patience = parse_distribution(aw.child("patience")) if "patience" in aw.value else None
        balk = number(aw.child("balk_at"), positive=True, integer=True) \
            if "balk_at" in aw.value else None
        hold = aw.value.get("hold", False)
        if not isinstance(hold, bool):
            aw.child("hold").fail("'hold' must be true or false", "write hold: true")
        rel = aw.value.get("releases", [])
        if not isinstance(rel, list):
            aw.child("releases").fail("'releases' lists resources", "write releases: [cubicles]")
        for i, r in enumerate(rel):
            if r not in resources:
                aw.child("releases").child(i).fail(f"release of unknown resource '{r}'",
                                                   f"use one of {sorted(resources)}")
        out[name] = Activity(name, res.value, dur, hold, patience, balk, tuple(rel))
    return out


def _step(sw: Where, activities: dict[str, Activity], resources: dict[str, Resource]) -> dict:
    v = sw.value
    if isinstance(v, str):
        v = {"activity": v}
    elif not isinstance(v, dict):
        sw.fail("a pathway step is an activity name or a mapping",
                "write '- triage' or '- {branch: {treat: 0.6, exit: 0.4}}'")
    else:
        unknown_keys(sw, {"id", "activity", "branch", "release", "next"})
    kinds = [k for k in ("activity", "branch", "release") if k in v]
    if len(kinds) != 1:
        sw.fail("a step needs exactly one of 'activity', 'branch', 'release'",
                "split it into separate steps")
    kind = kinds[0]
    kw = sw.child(kind) if isinstance(sw.value, dict) else sw
    if kind == "activity" and v["activity"] not in activities:
        kw.fail(f"unknown activity '{v['activity']}'",
                f"use one of {sorted(activities)} or define it under activities")
    if kind == "release" and v["release"] not in resources:
        kw.fail(f"release of unknown resource '{v['release']}'", f"use one of {sorted(resources)}")
    step_id = v.get("id", v[kind] if kind != "branch" else None)
    return {"id": step_id, "kind": kind, "w": sw, "kw": kw, "v": v}


def _classes(w: Where, activities: dict[str, Activity],
             resources: dict[str, Resource]) -> dict[str, PatientClass]:
    mapping(w, "classes")
    out = {}
    for name in w.value:
        cw = w.child(name)
        mapping(cw, f"class '{name}'")
        unknown_keys(cw, {"priority", "pathway", "description"})
        prio = number(cw.child("priority"), integer=True) if "priority" in cw.value else 0
        pw = need(cw, "pathway", f"class '{name}'")
        if not isinstance(pw.value, list) or not pw.value:
            pw.fail("a pathway is a non-empty list of steps", "list the activities in order")
        raw = [_step(pw.child(i), activities, resources) for i in range(len(pw.value))]
        ids: dict[str, int] = {}
        for i, s in enumerate(raw):
            if s["id"] is None:
                s["id"] = f"branch{i}"
            if s["id"] in ids or s["id"] == EXIT:
                s["w"].fail(f"step id '{s['id']}' is used twice in this pathway",
                            "give the repeated step its own 'id:'")
            ids[s["id"]] = i
        steps = []
        for i, s in enumerate(raw):
            follow = raw[i + 1]["id"] if i + 1 < len(raw) else EXIT
            if s["kind"] == "branch":
                bw = s["kw"]
                mapping(bw, "a branch")
                nxt = []
                for tgt in bw.value:
                    if tgt not in ids and tgt != EXIT:
                        bw.child(tgt).fail(f"branch to unknown step '{tgt}'",
                                           f"use one of {sorted(ids) + [EXIT]}")
                    nxt.append((tgt, number(bw.child(tgt), nonneg=True)))
                total = sum(p for _, p in nxt)
                if abs(total - 1) > 1e-6:
                    bw.fail(f"branch probabilities sum to {total:.6g}, not 1",
                            "make the probabilities of the branch add up to 1")
            else:
                tgt = s["v"].get("next", follow)
                if tgt not in ids and tgt != EXIT:
                    s["w"].child("next").fail(f"next step '{tgt}' is not in this pathway",
                                              f"use one of {sorted(ids) + [EXIT]}")
                nxt = [(tgt, 1.0)]
            steps.append(Step(s["id"], s["kind"], s["v"].get(s["kind"], "")
                              if s["kind"] != "branch" else "", tuple(nxt)))
        _check_exit(steps, raw)
        out[name] = PatientClass(name, tuple(steps), prio)
    return out


def _check_exit(steps: list[Step], raw: list[dict]) -> None:
    """Every step reachable from the start must be able to reach the exit (no trap cycles)."""
    index = {s.id: i for i, s in enumerate(steps)}
    edges = [[index[t] for t, p in s.next if t != EXIT and p > 0] for s in steps]
    exits = {i for i, s in enumerate(steps) if any(t == EXIT and p > 0 for t, p in s.next)}
    can_exit = set(exits)
    changed = True
    while changed:
        changed = False
        for i, e in enumerate(edges):
            if i not in can_exit and any(j in can_exit for j in e):
                can_exit.add(i)
                changed = True
    seen, todo = set(), [0]
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        todo.extend(edges[i])
    for i in sorted(seen - can_exit):
        raw[i]["w"].fail(f"step '{steps[i].id}' is in a cycle with no exit: a patient who "
                         "reaches it never leaves",
                         "give the loop a branch to 'exit' (or a later step) with probability > 0")


def _arrivals(w: Where, classes: dict[str, PatientClass]) -> tuple[ArrivalStream, ...]:
    if not isinstance(w.value, list) or not w.value:
        w.fail("arrivals must be a non-empty list of arrival streams",
               "add '- {name: walk_in, rate_per_hour: 10, class: ...}'")
    out = []
    for i in range(len(w.value)):
        aw = w.child(i)
        mapping(aw, "an arrival stream")
        unknown_keys(aw, {"name", "rate_per_hour", "rates_per_hour", "day_of_week", "class",
                          "classes", "source"})
        name = str(aw.value.get("name", f"arrivals{i}"))
        if "rates_per_hour" in aw.value:
            rw = aw.child("rates_per_hour")
            if not isinstance(rw.value, list) or len(rw.value) not in (24, 168):
                rw.fail("rates_per_hour lists 24 (by hour of day) or 168 (by hour of week) rates",
                        "give 24 numbers, 00:00-01:00 first (0 for closed hours)")
            rates = tuple(number(rw.child(j), nonneg=True) for j in range(len(rw.value)))
        else:
            rates = (number(need(aw, "rate_per_hour", "an arrival stream"), nonneg=True),)
        if max(rates) <= 0:
            aw.fail("this stream never brings anyone (all rates are 0)", "give a positive rate")
        dow = None
        if "day_of_week" in aw.value:
            dw = aw.child("day_of_week")
            if not isinstance(dw.value, list) or len(dw.value) != 7:
                dw.fail("day_of_week lists 7 multipliers, Monday first",
                        "give 7 numbers such as [1.1, 1, 1, 1, 1, 0.9, 0.9]")
            dow = tuple(number(dw.child(j), nonneg=True) for j in range(7))
        if "class" in aw.value:
            mix = [(aw.value["class"], 1.0)]
            cw = aw.child("class")
            if aw.value["class"] not in classes:
                cw.fail(f"unknown class '{aw.value['class']}'", f"use one of {sorted(classes)}")
        else:
            cw = need(aw, "classes", "an arrival stream")
            mapping(cw, "classes")
            mix = []
            for c in cw.value:
                if c not in classes:
                    cw.child(c).fail(f"unknown class '{c}'", f"use one of {sorted(classes)}")
                mix.append((c, number(cw.child(c), nonneg=True)))
            total = sum(p for _, p in mix)
            if abs(total - 1) > 1e-6:
                cw.fail(f"class probabilities sum to {total:.6g}, not 1",
                        "make the class mix add up to 1")
        out.append(ArrivalStream(name, rates, tuple(mix), dow))
    return tuple(out)


def _run(w: Where) -> dict:
    mapping(w, "run")
    unknown_keys(w, {"warm_up", "length", "replications"})
    out: dict[str, Any] = {}
    if "warm_up" in w.value:
        out["warm_up"] = number(w.child("warm_up"), nonneg=True)
    if "length" in w.value:
        out["length"] = number(w.child("length"), positive=True)
    if "replications" in w.value:
        out["replications"] = number(w.child("replications"), positive=True, integer=True)
    return out


def _clock(w: Where) -> dict:
    mapping(w, "clock")
    unknown_keys(w, {"start_hour", "start_day"})
    out: dict[str, Any] = {}
    if "start_hour" in w.value:
        out["start_hour"] = number(w.child("start_hour"), nonneg=True)
        if out["start_hour"] >= 24:
            w.child("start_hour").fail("start_hour must be below 24", "use 0-23.99")
    if "start_day" in w.value:
        out["start_day"] = number(w.child("start_day"), nonneg=True, integer=True)
        if out["start_day"] > 6:
            w.child("start_day").fail("start_day must be 0 (Monday) to 6", "use 0-6")
    return out


def _targets(w: Where) -> dict[str, float]:
    mapping(w, "kpis")
    unknown_keys(w, {"within"})
    out = {}
    if "within" in w.value:
        ww = w.child("within")
        mapping(ww, "kpis.within")
        for k in ww.value:
            out[str(k)] = number(ww.child(k), positive=True)
    return out


def _census(w: Where, activities: dict[str, Activity]) -> dict[str, str]:
    mapping(w, "census")
    unknown_keys(w, {"activity", "encounter_class"})
    aw = need(w, "activity", "census")
    if aw.value not in activities:
        aw.fail(f"unknown activity '{aw.value}'", f"use one of {sorted(activities)}")
    return {k: str(v) for k, v in w.value.items()}


def with_changes(model: Model, changes: dict[str, Any], *, arrival_scale: float = 1.0) -> Model:
    """A new model: ``changes`` deep-merged into the base description, arrivals scaled.

    The merged description is validated again, so a scenario cannot break the rules.
    """
    data = copy.deepcopy(model.raw)
    _merge(data, changes)
    if arrival_scale != 1.0:
        if arrival_scale < 0:
            raise ValueError("arrival_scale must be >= 0")
        for a in data.get("arrivals", []):
            if "rates_per_hour" in a:
                a["rates_per_hour"] = [r * arrival_scale for r in a["rates_per_hour"]]
            if "rate_per_hour" in a:
                a["rate_per_hour"] = a["rate_per_hour"] * arrival_scale
    return parse_model(data, model.file)


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
