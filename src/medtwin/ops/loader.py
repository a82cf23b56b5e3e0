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

from medtwin.core.filecontext import Where, mapping, nearest, need, number, unknown_keys
from medtwin.core.yamlio import line_of, load_yaml, plain
from medtwin.ops.distributions import parse_distribution
from medtwin.ops.errors import ModelFileError, ModelNotFoundError
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
            res.fail(f"activity '{name}' uses unknown resource '{res.value}'"
                     f"{nearest(res.value, resources)}",
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
                aw.child("releases").child(i).fail(f"release of unknown resource '{r}'"
                                                   f"{nearest(r, resources)}",
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
        kw.fail(f"unknown activity '{v['activity']}'{nearest(v['activity'], activities)}",
                f"use one of {sorted(activities)} or define it under activities")
    if kind == "release" and v["release"] not in resources:
        kw.fail(f"release of unknown resource '{v['release']}'"
                f"{nearest(v['release'], resources)}", f"use one of {sorted(resources)}")
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
                        bw.child(tgt).fail(f"branch to unknown step '{tgt}'"
                                           f"{nearest(tgt, [*ids, EXIT])}",
                                           f"use one of {sorted(ids) + [EXIT]}")
                    nxt.append((tgt, number(bw.child(tgt), nonneg=True)))
                total = sum(p for _, p in nxt)
                if abs(total - 1) > 1e-6:
                    bw.fail(f"branch probabilities sum to {total:.6g}, not 1",
                            "make the probabilities of the branch add up to 1")
            else:
                tgt = s["v"].get("next", follow)
                if tgt not in ids and tgt != EXIT:
                    s["w"].child("next").fail(f"next step '{tgt}' is not in this pathway"
                                              f"{nearest(tgt, [*ids, EXIT])}",
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
        unknown_keys(aw, {"name", "rate_per_hour", "rates_per_hour", "rates_csv",
                          "opening_hours", "scale", "day_of_week", "class", "classes",
                          "source"})
        name = str(aw.value.get("name", f"arrivals{i}"))
        if name in [a.name for a in out]:
            aw.fail(f"two arrival streams are named '{name}'",
                    "give each stream its own name (it keys its random numbers)")
        given = [k for k in ("rate_per_hour", "rates_per_hour", "rates_csv") if k in aw.value]
        if len(given) > 1:
            aw.child(given[1]).fail(f"give one of {given}, not both",
                                    f"keep '{given[0]}' or '{given[1]}'")
        if "rates_csv" in aw.value:
            rates = _rates_csv(aw.child("rates_csv"))
        elif "rates_per_hour" in aw.value:
            rw = aw.child("rates_per_hour")
            if not isinstance(rw.value, list) or len(rw.value) not in (24, 168):
                rw.fail("rates_per_hour lists 24 (by hour of day) or 168 (by hour of week) rates",
                        "give 24 numbers, 00:00-01:00 first (0 for closed hours)")
            rates = tuple(number(rw.child(j), nonneg=True) for j in range(len(rw.value)))
        else:
            rates = (number(need(aw, "rate_per_hour", "an arrival stream"), nonneg=True),)
        if "opening_hours" in aw.value:
            rates = _open_only(rates, _opening_hours(aw.child("opening_hours")))
        if "scale" in aw.value:
            k = number(aw.child("scale"), nonneg=True)
            rates = tuple(r * k for r in rates)
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
                cw.fail(f"unknown class '{aw.value['class']}'"
                        f"{nearest(aw.value['class'], classes)}", f"use one of {sorted(classes)}")
        else:
            cw = need(aw, "classes", "an arrival stream")
            mapping(cw, "classes")
            mix = []
            for c in cw.value:
                if c not in classes:
                    cw.child(c).fail(f"unknown class '{c}'{nearest(c, classes)}",
                                     f"use one of {sorted(classes)}")
                mix.append((c, number(cw.child(c), nonneg=True)))
            total = sum(p for _, p in mix)
            if abs(total - 1) > 1e-6:
                cw.fail(f"class probabilities sum to {total:.6g}, not 1",
                        "make the class mix add up to 1")
        out.append(ArrivalStream(name, rates, tuple(mix), dow))
    return tuple(out)


def _rates_csv(w: Where) -> tuple[float, ...]:
    """Hourly rates from a CSV file (path relative to the model file): 24 rows (by hour of
    day, 00:00-01:00 first) or 168 (by hour of the week, Monday 00:00 first); the last column
    of each row is the rate, an optional header row names the columns."""
    import csv

    if not isinstance(w.value, str) or not w.value:
        w.fail("rates_csv is the path of a CSV file", "write rates_csv: arrivals_by_hour.csv")
    path = Path(w.value)
    if not path.is_absolute():
        path = Path(w.file).parent / path
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(fh)) if any(c.strip() for c in r)]
    except OSError as exc:
        w.fail(f"cannot read the rates CSV {str(path)!r}: {exc.strerror or exc}",
               "give a path to an existing CSV file, relative to the model file")
    rates = []
    for k, (line, row) in enumerate(rows):
        cell = row[-1].strip()
        try:
            value = float(cell)
        except ValueError:
            if k == 0:
                continue  # a header
            raise ModelFileError(f"expected a rate (a number), got {cell!r}", file=str(path),
                                 line=line, fix="write one rate per row (arrivals per hour)") \
                from None
        if not value >= 0 or value == float("inf"):
            raise ModelFileError(f"rates must be finite and >= 0, got {cell!r}", file=str(path),
                                 line=line, fix="use zero or a positive rate")
        rates.append(value)
    if len(rates) not in (24, 168):
        w.fail(f"the rates CSV {str(path)!r} has {len(rates)} rates, not 24 or 168",
               "give 24 rows (hour of day, 00:00 first) or 168 (hour of week, Monday first)")
    return tuple(rates)


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day_set(w: Where, key: str) -> list[int]:
    k = str(key).strip().lower()
    if k in ("daily", "all", "every_day"):
        return list(range(7))
    if k in ("weekdays", "weekday"):
        return list(range(5))
    if k in ("weekend", "weekends"):
        return [5, 6]
    if "-" in k:
        a, b = (x.strip() for x in k.split("-", 1))
        if all(x in DAYS or x in DAY_NAMES for x in (a, b)):
            a, b = a[:3], b[:3]
            i, j = DAYS.index(a), DAYS.index(b)
            return [(i + d) % 7 for d in range((j - i) % 7 + 1)]
    elif k in DAYS or k in DAY_NAMES:
        return [DAYS.index(k[:3])]
    w.fail(f"unknown day '{key}'{nearest(k, (*DAYS, 'daily', 'weekdays', 'weekend'))}",
           "use mon..sun, a range such as mon-fri, daily, weekdays or weekend")


def _hour(w: Where, text: str) -> int:
    import re

    m = re.fullmatch(r"\s*(\d{1,2})(?::(\d{2}))?\s*", text)
    if not m or int(m.group(1)) > 24 or (m.group(2) and int(m.group(2)) != 0):
        w.fail(f"cannot read the time {text!r}: opening hours are whole hours",
               "write hours as 'HH:00-HH:00', e.g. '08:00-20:00'")
    return int(m.group(1))


def _opening_hours(w: Where) -> tuple[bool, ...]:
    """The 168 open/closed hours of the week from a table such as
    ``{mon-fri: "08:00-20:00", sat: "09:00-13:00", sun: closed}`` (days not listed are
    closed; a range past midnight runs into the next day; a day may list several ranges)."""
    mapping(w, "opening_hours")
    open_ = [False] * 168
    for key in w.value:
        dw = w.child(key)
        days = _day_set(dw, key)
        spans = dw.value if isinstance(dw.value, list) else [dw.value]
        for span in spans:
            if span is False or str(span).strip().lower() == "closed":
                continue
            if not isinstance(span, str) or "-" not in span:
                dw.fail(f"cannot read opening hours {span!r}",
                        "write 'HH:00-HH:00' (or closed), e.g. mon-fri: '08:00-20:00'")
            a, b = span.split("-", 1)
            start, end = _hour(dw, a), _hour(dw, b)
            length = (end - start) % 24 or 24  # 00:00-24:00 is the whole day
            for d in days:
                for h in range(start, start + length):
                    open_[(d * 24 + h) % 168] = True
    if not any(open_):
        w.fail("the opening hours never open", "give at least one open day, e.g. "
               "mon-fri: '08:00-18:00'")
    return tuple(open_)


def _open_only(rates: tuple[float, ...], open_: tuple[bool, ...]) -> tuple[float, ...]:
    """Hour-of-week rates: ``rates`` (1, 24 or 168 of them) where open, 0 where closed."""
    return tuple(rates[h % len(rates)] if open_[h] else 0.0 for h in range(168))


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
        aw.fail(f"unknown activity '{aw.value}'{nearest(aw.value, activities)}",
                f"use one of {sorted(activities)}")
    return {k: str(v) for k, v in w.value.items()}


NAMED = ("resources", "activities", "classes")


def with_changes(model: Model, changes: dict[str, Any], *, arrival_scale: float = 1.0,
                 add: dict[str, Any] | None = None, file: str | None = None) -> Model:
    """A new model: ``changes`` deep-merged into the base description, arrivals scaled.

    ``changes`` may only change what the base has: a resource, activity, class or arrival
    stream it does not name is an error (with the nearest valid name), so a typo cannot
    silently add something unused. ``add`` adds new ones (merged after ``changes``). An
    ``arrivals`` list is merged stream by stream (by ``name``). The merged description is
    validated again, so a scenario cannot break the rules. ``file`` names where the changes
    come from (a scenario file; its line numbers are kept when ``changes`` was read from it).
    """
    where = Where(file or "<changes>", "changes", changes)
    mapping(where, "changes")
    _check_changes(model, where)
    data = copy.deepcopy(model.raw)
    _merge(data, changes)
    if add:
        aw = Where(file or "<changes>", "add", add)
        mapping(aw, "add")
        unknown_keys(aw, set(NAMED) | {"arrivals"})
        for k, v in add.items():
            if k == "arrivals":
                if not isinstance(v, list):
                    aw.child(k).fail("add.arrivals lists new arrival streams",
                                     "write add: {arrivals: [{name: ..., rate_per_hour: ...}]}")
                data.setdefault("arrivals", []).extend(copy.deepcopy(plain(v)))
            else:
                mapping(aw.child(k), f"add.{k}")
                for name in v:
                    if name in data.get(k, {}):
                        aw.child(k).child(name).fail(f"'{name}' is already in {k}",
                                                     "change it under 'changes:' instead")
                data.setdefault(k, {}).update(copy.deepcopy(plain(v)))
    if arrival_scale != 1.0:
        if arrival_scale < 0:
            raise ValueError("arrival_scale must be >= 0")
        for a in data.get("arrivals", []):
            a["scale"] = a.get("scale", 1.0) * arrival_scale
    try:
        return parse_model(data, model.file)
    except ModelFileError as exc:
        if file is None:
            raise
        raise _blame(exc, changes, data, file) from None


def _check_changes(model: Model, w: Where) -> None:
    """Names in ``changes`` must exist in the base model."""
    unknown_keys(w, TOP_KEYS)
    for key in NAMED:
        if key in w.value:
            kw = w.child(key)
            mapping(kw, key)
            have = model.raw.get(key, {})
            for name in kw.value:
                if name not in have:
                    kw.child(name).fail(
                        f"the base model has no {key[:-1] if key != 'classes' else 'class'} "
                        f"'{name}'{nearest(name, have)}",
                        f"use one of {sorted(have)}, or put a new one under 'add:'")
    if "arrivals" in w.value:
        aw = w.child("arrivals")
        if not isinstance(aw.value, list):
            aw.fail("changes.arrivals lists the streams to change, by name",
                    "write arrivals: [{name: walk_in, rate_per_hour: 12}]")
        names = _stream_names(model.raw.get("arrivals", []))
        for i, item in enumerate(aw.value):
            iw = aw.child(i)
            mapping(iw, "an arrival stream change")
            name = item.get("name")
            if name is None and len(names) == 1:
                continue
            if name not in names:
                (iw.child("name") if "name" in item else iw).fail(
                    f"the base model has no arrival stream '{name}'{nearest(name, names)}",
                    f"name one of {names}, or put a new stream under 'add: {{arrivals: ...}}'")


def _stream_names(streams: list) -> list[str]:
    return [str(a.get("name", f"arrivals{i}")) if isinstance(a, dict) else f"arrivals{i}"
            for i, a in enumerate(streams)]


def _blame(exc: ModelFileError, changes: Any, merged: dict, file: str) -> ModelFileError:
    """Point an error in the merged model at the scenario line that caused it, if any."""
    import re

    parts = [p for p in re.split(r"\.|\[(\d+)\]", exc.key) if p]
    node, line, found = changes, None, []
    for p in parts:
        key: Any = int(p) if p.isdigit() else p
        if isinstance(key, int) and found == ["arrivals"] and isinstance(node, list):
            name = _stream_names(merged.get("arrivals", []))[key]
            hits = [j for j, a in enumerate(node) if isinstance(a, dict)
                    and str(a.get("name", name if len(node) == 1 else None)) == name]
            if not hits:
                break
            key = hits[0]
        try:
            nxt = node[key]
        except (KeyError, IndexError, TypeError):
            break
        line = line_of(node, key) or line
        node = nxt
        found.append(p)
    if not found:
        return exc
    return ModelFileError(f"{exc.message} (in the model merged with the scenario)", file=file,
                          key="changes." + exc.key, line=line, fix="")


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if k == "arrivals" and isinstance(v, list) and isinstance(base.get(k), list):
            _merge_streams(base[k], v)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


_RATE_KEYS = ("rate_per_hour", "rates_per_hour", "rates_csv")


def _merge_streams(base: list, new: list) -> None:
    """Merge changed arrival streams into the base list by name (a lone stream may omit it);
    a new rate form replaces the old one."""
    names = _stream_names(base)
    for item in new:
        name = item.get("name", names[0] if len(names) == 1 else None)
        i = names.index(str(name))
        target = base[i]
        if any(k in item for k in _RATE_KEYS):
            for k in _RATE_KEYS:
                target.pop(k, None)
        if "class" in item:
            target.pop("classes", None)
        if "classes" in item:
            target.pop("class", None)
            target["classes"] = {}
        _merge(target, {k: v for k, v in item.items()})
