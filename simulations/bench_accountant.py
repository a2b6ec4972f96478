"""Benchmark: time per epsilon query of several accountants (prints a table; not a test).

Rows: a homogeneous run (sigma=1.0, q=0.004) for 1e2..1e6 steps, and a heterogeneous history of
1,000 rounds each adding one 10-step event whose (sigma, q) is drawn from 4 x 5 values.  Columns: Edgeworth
estimate (this package), certified PLD bound (this package, cold cache), Opacus RDP, Opacus PRV,
dp_accounting PLD (pessimistic, vdi=1e-4, composed from scratch), and ratios PLD / ours.
Each cell is the best of ``--repeats`` (default 1-3) fresh-state runs; delta = 1e-5.

    python simulations/bench_accountant.py [--max-steps 1e6] [--skip-slow]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from fedguard.privacy import EdgeworthAccountant, PldCertifier
from fedguard.privacy.cumulants import pllr_cumulants

DELTA = 1e-5


def _best(fn, repeats: int) -> tuple[float, float]:
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def _edgeworth(history):
    def run():
        pllr_cumulants.cache_clear()  # cold: includes the cumulant quadrature
        acc = EdgeworthAccountant(certifier=PldCertifier())
        for (s, q), n in history.items():
            acc.add(s, q, n)
        return acc.epsilon_estimate(DELTA)
    return run


def _certified(history):
    def run():
        acc = EdgeworthAccountant(certifier=PldCertifier())  # fresh cache: cold cost
        for (s, q), n in history.items():
            acc.add(s, q, n)
        return acc.epsilon_certified(DELTA)
    return run


def _opacus(name, history):
    def run():
        from opacus.accountants import PRVAccountant, RDPAccountant

        acc = RDPAccountant() if name == "rdp" else PRVAccountant()
        acc.history = [(s, q, n) for (s, q), n in history.items()]
        return acc.get_epsilon(DELTA)
    return run


def _dp_pld(history):
    def run():
        from dp_accounting import dp_event
        from dp_accounting.pld import pld_privacy_accountant

        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
        for (s, q), n in history.items():
            acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), n)
        return acc.get_epsilon(DELTA)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-steps", type=float, default=1e6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="skip PRV/PLD above 1e5 steps")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    rng = np.random.default_rng(0)
    cases = [(f"1 event x {int(n):.0e} steps", {(1.0, 0.004): int(n)})
             for n in (1e2, 1e3, 1e4, 1e5, 1e6) if n <= args.max_steps]
    hetero = {}
    sigmas, rates = (0.8, 1.0, 1.2, 1.5), (0.002, 0.004, 0.008, 0.01, 0.02)
    for _ in range(1000):  # 1000 rounds, one event per round (10 steps) with a per-round (sigma, q)
        key = (float(rng.choice(sigmas)), float(rng.choice(rates)))
        hetero[key] = hetero.get(key, 0) + 10
    cases.append((f"1000 rounds hetero ({len(hetero)} distinct)", hetero))

    cols = ["edgeworth", "certified", "rdp", "prv", "dp_pld"]
    print(f"delta={DELTA:g}; seconds per query (best of up to {args.repeats}); eps in brackets")
    print(f"{'case':<36}" + "".join(f"{c:>20}" for c in cols) + f"{'PLD/edgew':>11}{'PLD/cert':>10}")
    for label, history in cases:
        steps = sum(history.values())
        row = {}
        for col in cols:
            slow = col in ("prv", "dp_pld", "certified") and steps > 1e5
            if slow and args.skip_slow:
                row[col] = None
                continue
            fn = {"edgeworth": _edgeworth(history), "certified": _certified(history),
                  "rdp": _opacus("rdp", history), "prv": _opacus("prv", history),
                  "dp_pld": _dp_pld(history)}[col]
            reps = 1 if col in ("prv", "dp_pld", "certified") else args.repeats
            try:
                row[col] = _best(fn, reps)
            except Exception as exc:  # report, do not abort the table
                row[col] = (float("nan"), f"{type(exc).__name__}")
        cells = []
        for col in cols:
            if row[col] is None:
                cells.append(f"{'skipped':>20}")
            else:
                t, v = row[col]
                vs = f"{v:.3f}" if isinstance(v, float) else str(v)
                cells.append(f"{t:>11.4f} [{vs:>6}]")
        ratio = lambda a: (row["dp_pld"][0] / row[a][0]) if row["dp_pld"] and row[a] else float("nan")  # noqa: E731
        print(f"{label:<36}" + "".join(cells) + f"{ratio('edgeworth'):>10.0f}x{ratio('certified'):>9.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
