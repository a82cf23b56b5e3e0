"""Benchmark of the ops engine: M/M/3 (lambda 2.7, mu 1) for 100,000 customers as a YAML
model, against a minimal hand-written SimPy script and Ciw, in the same run; then the Nelson
treatment-centre model for 20 replications. Prints CPU time (time.process_time), simulated
events/s (events = arrival + service start + service end per customer) and the ratios.

Goal (issue 7): the YAML model costs at most 1.5x the minimal SimPy script and beats Ciw.

    .venv/bin/python benchmarks/bench_ops.py [--customers 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import time

import simpy

from medtwin.core.yamlio import load_yaml
from medtwin.ops.engine import run_replication
from medtwin.ops.kpis import rep_kpis
from medtwin.ops.loader import load_model, parse_model
from medtwin.ops.runner import run_replications

LAM, MU, C = 2.7, 1.0, 3

MM3 = """
name: mm3_bench
time_unit: hours
run: {{warm_up: 0, length: {length}, replications: 1}}
resources: {{servers: {{capacity: 3}}}}
activities:
  service: {{resource: servers, duration: {{dist: exponential, mean: 1.0}}}}
classes: {{customer: {{pathway: [service]}}}}
arrivals: [{{name: poisson, rate_per_hour: 2.7, class: customer}}]
"""


def simpy_minimal(n: int, seed: int) -> tuple[int, float]:
    """The smallest honest SimPy M/M/3: keeps only the waits."""
    rnd = random.Random(seed)
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=C)
    waits: list[float] = []

    def customer():
        t = env.now
        with servers.request() as req:
            yield req
            waits.append(env.now - t)
            yield env.timeout(rnd.expovariate(MU))

    def source():
        for _ in range(n):
            yield env.timeout(rnd.expovariate(LAM))
            env.process(customer())

    env.process(source())
    env.run()
    return len(waits), sum(waits) / len(waits)


def ciw_run(n: int, seed: int) -> tuple[int, float]:
    import ciw

    ciw.seed(seed)
    net = ciw.create_network(arrival_distributions=[ciw.dists.Exponential(LAM)],
                             service_distributions=[ciw.dists.Exponential(MU)],
                             number_of_servers=[C])
    sim = ciw.Simulation(net)
    sim.simulate_until_max_customers(n, method="Arrive")
    recs = sim.get_all_records()
    return len(recs), sum(r.waiting_time for r in recs) / len(recs)


def medtwin_run(n: int, seed: int) -> tuple[int, float, int]:
    model = parse_model(load_yaml(MM3.format(length=n / LAM)), "<mm3 bench>")
    log = run_replication(model, seed, 0)
    k = rep_kpis(model, log)
    return int(k["arrivals"]), k["wait:service"], log.events


def timed(fn, *args):
    t = time.process_time()
    out = fn(*args)
    return time.process_time() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N (each CPU timed)")
    args = ap.parse_args()
    n = args.customers
    print(f"M/M/3, lambda {LAM}, mu {MU}, {n:,} customers; Erlang C Wq = 2.7235 "
          f"(best of {args.repeat}, CPU seconds)")
    best: dict[str, tuple[float, object]] = {}
    for r in range(args.repeat):
        for name, fn in (("simpy minimal", simpy_minimal), ("medtwin YAML", medtwin_run),
                         ("ciw", ciw_run)):
            t, out = timed(fn, n, r)
            if name not in best or t < best[name][0]:
                best[name] = (t, out)
    for name, (t, out) in best.items():
        events = out[2] if name == "medtwin YAML" else 3 * out[0]
        print(f"  {name:<14} CPU {t:6.3f} s  {events / t:12,.0f} events/s  "
              f"customers {out[0]:,}  mean wait {out[1]:.4f}")
    ts = best["simpy minimal"][0]
    tm = best["medtwin YAML"][0]
    tc = best["ciw"][0]
    print(f"  ratio medtwin/simpy-minimal = {tm / ts:.2f} (goal <= 1.5)")
    print(f"  ratio medtwin/ciw           = {tm / tc:.2f} (goal < 1)")

    model = load_model("nelson")
    t = time.process_time()
    res = run_replications(model, 20, 0, progress=False, hourly=False)
    tn = time.process_time() - t
    print(f"Nelson treatment centre, 20 replications: CPU {tn:.3f} s, {res.events:,} events, "
          f"{res.events / tn:,.0f} events/s")


if __name__ == "__main__":
    main()
