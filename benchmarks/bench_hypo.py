"""Hypoglycaemia prediction by the glucose twin on the 30 virtual subjects (issue 5).

Truth: the 30 UVA/Padova subjects, ``--days`` days, meals drawn by ``RandomMeals``, a
basal-bolus controller whose meal bolus is off by a random factor 1/U(0.6, 1.4) per meal
(mis-estimated carbohydrate ratio, causing lows), an ideal pump, Dexcom CGM noise (a reading
every 3 min). The twin's prior is each subject's own parameter set with Vmx and kp3 wrong by a
random factor exp(N(0, 0.25)); it is told the delivered insulin and the meals as they happen
(never the future), assimilates each CGM reading as it comes (Vmx learned by the filter's
likelihood bank, kp3 by the ensemble, as the twin does; ``--bank none``: both by the ensemble),
and after each one computes P(glucose < 70 mg/dL within 30 min) by propagating its ensemble
(all 30 x N members are one engine cohort; future inputs: the basal rate only).

Definitions (true glucose = subcutaneous glucose, 1-min resolution):

- hypoglycaemic event: a run of true glucose < 70 mg/dL lasting >= 15 min; runs separated by
  < 15 min above 70 are one event; onset = its first minute below 70;
- alarm: raised at a reading when P >= p* and no alarm is active; it stays active until a
  reading with P < p* (so one alarm per episode, as the alert store de-duplicates);
- detected event: an alarm was active at some time in [onset - 30 min, onset]; lead time =
  onset - the time that alarm was raised;
- false alarm: an alarm that is not active in any event's [onset - 30, onset] window and was
  not raised during an event (true glucose < 70).

p* is chosen on a separate calibration run (seed + 1, ``--calib-days``): the smallest p* with
<= 1 false alarm per patient-day there; the figures are then reported on the main run.
Run: ``.venv/bin/python benchmarks/bench_hypo.py --days 7``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from medtwin.core.schedule import Meal, Schedule
from medtwin.core.simulate import simulate
from medtwin.devices.cgm import CGMSensor
from medtwin.devices.controllers import BasalBolus
from medtwin.models.glucose.constants import HYPO_THRESHOLD
from medtwin.models.glucose.loop import ControlAction
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.models.glucose.uva_padova import UVAPadova
from medtwin.trials.protocol import RandomMeals
from medtwin.twin import glucose_bank as gb
from medtwin.twin import glucose_filter as gf


class MisBolus(BasalBolus):
    """Basal-bolus with a meal bolus wrong by 1/U(0.6, 1.4) per meal."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs):  # noqa: ANN001, ANN204
        a = super().__call__(obs)
        f = 1.0 / self.rng.uniform(0.6, 1.4, size=a.bolus.shape)
        return ControlAction(a.basal, np.where(obs.meal > 0, a.bolus * f, 0.0))


def truth(days: float, seed: int):
    model, cohort = UVAPadova(), uva_padova_cohort()
    proto = RandomMeals()
    events = []
    for i, sid in enumerate(cohort.ids):
        t, g = proto.meals(i, days, seed)
        events += [Meal(float(a), float(b), subject=sid) for a, b in zip(t, g, strict=True)]
    n = int(days * 1440)
    res = simulate(model, cohort, Schedule(events), np.arange(n + 1.0), controller=MisBolus(seed),
                   sensor=CGMSensor.from_name("Dexcom"), seed=seed)
    u = np.stack([res["CHO [g/min]"], res["insulin [U/min]"]], -1)[:, :-1]
    return cohort, model, res["G_sc [mg/dL]"], res["CGM [mg/dL]"], u


def run_twin(cohort, model, cgm, u, seed, n_members, sample=3, horizon=30, bank="Vmx"):
    st = gf.FilterSettings(n_members=n_members, adapt=("Vmx", "kp3"), seed=seed, bank=bank)
    rng = np.random.default_rng(seed + 7)
    p = cohort.parameters(model)
    base = np.repeat(p[:, None, :], n_members, axis=1)
    for name in ("Vmx", "kp3"):  # the prior is wrong
        base[..., gf._P[name]] *= np.exp(0.25 * rng.standard_normal((len(p), 1)))
    ens = gf.new_ensemble(base, st, cgm[:, 0], rng)
    bk = gb.new_bank(ens, 0.0)  # as the twin: the bank learns Vmx, the ensemble kp3
    basal = u[:, 0, 1]
    fut = np.zeros((len(p), horizon, 2))
    fut[..., 1] = basal[:, None]
    times = np.arange(sample, u.shape[1] + 1, sample)
    prob = np.zeros((len(p), times.size))
    for j, k in enumerate(times):
        gf.advance(ens, k - sample, u[:, k - sample:k], rng, bk)
        gb.assimilate(ens, bk, cgm[:, k], float(k))
        frng = np.random.default_rng([seed, int(k)])
        paths = gf.glucose_paths(ens, float(k), fut, frng)
        prob[:, j], _ = gf.hypo_probability(paths, HYPO_THRESHOLD, horizon)
    return times, prob


def events(g):
    """(onset, end) minute pairs of runs < 70 for >= 15 min, merged across gaps < 15 min."""
    below = g < HYPO_THRESHOLD
    runs, k = [], 0
    while k < g.size:
        if below[k]:
            a = k
            while k < g.size and below[k]:
                k += 1
            runs.append([a, k])
        else:
            k += 1
    merged = []
    for a, b in runs:
        if merged and a - merged[-1][1] < 15:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged if b - a >= 15]


def score(G, times, prob, pstar):
    n_ev = det = fa = 0
    leads = []
    for s in range(G.shape[0]):
        ev = events(G[s])
        on = prob[s] >= pstar
        alarms = []  # (raised, cleared)
        j = 0
        while j < on.size:
            if on[j]:
                a = j
                while j < on.size and on[j]:
                    j += 1
                alarms.append((times[a], times[j] if j < on.size else times[-1] + 1))
            else:
                j += 1
        used = set()
        for onset, _ in ev:
            n_ev += 1
            hit = [i for i, (r, c) in enumerate(alarms) if r <= onset and c > onset - 30]
            if hit:
                det += 1
                leads.append(onset - alarms[hit[0]][0])
                used.update(hit)
        for i, (r, _) in enumerate(alarms):
            if i in used or any(a <= r < b for a, b in ev):
                continue
            fa += 1
    return n_ev, det, fa, leads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--calib-days", type=float, default=2.0)
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bank", default="Vmx", help="parameter the likelihood bank learns, or "
                    "'none' (the ensemble learns both)")
    a = ap.parse_args()
    bank = None if a.bank.lower() == "none" else a.bank
    t0 = time.perf_counter()
    grid = np.round(np.arange(0.05, 1.0001, 0.05), 2)
    c, m, G, cgm, u = truth(a.calib_days, a.seed + 1)
    tt, pr = run_twin(c, m, cgm, u, a.seed + 1, a.members, bank=bank)
    pd_days = G.shape[0] * a.calib_days
    pstar = next((p for p in grid if score(G, tt, pr, p)[2] / pd_days <= 1.0), grid[-1])
    c, m, G, cgm, u = truth(a.days, a.seed)
    tt, pr = run_twin(c, m, cgm, u, a.seed, a.members, bank=bank)
    n_ev, det, fa, leads = score(G, tt, pr, pstar)
    pdays = G.shape[0] * a.days
    sens = det / n_ev if n_ev else float("nan")
    lead = float(np.median(leads)) if leads else float("nan")
    print(f"subjects 30 x {a.days:g} days, {a.members} members each, bank: {bank}; "
          f"calibrated p* = {pstar}")
    print(f"hypoglycaemic events: {n_ev}; detected: {det}")
    print(f"sensitivity: {sens:.1%}   (goal >= 90%: {'met' if sens >= 0.9 else 'NOT met'})")
    print(f"false alarms per patient-day: {fa / pdays:.2f}   (goal <= 1: "
          f"{'met' if fa / pdays <= 1 else 'NOT met'})")
    print(f"median lead time: {lead:.1f} min   (goal >= 20: {'met' if lead >= 20 else 'NOT met'})")
    print("operating curve (p*: sensitivity, false alarms/patient-day, median lead):")
    for p in grid[::2]:
        n, d, f, lt = score(G, tt, pr, p)
        print(f"  {p:.2f}: {d / max(n, 1):.1%}, {f / pdays:.2f}, "
              f"{np.median(lt) if lt else float('nan'):.1f}")
    print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
