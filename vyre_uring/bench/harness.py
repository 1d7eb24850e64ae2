"""The method every benchmark shares: contenders run interleaved round by round (so
machine drift hits all alike), then min/median/max and ratios to a reference
measured in the same run. Nothing here times anything itself: a contender's run()
returns its own rate, so this logic is tested without timing."""
import importlib.util
import json
import os
import platform
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import vyre_uring

REFERENCE = "C liburing"


@dataclass
class Contender:
    """One way of doing a workload. run() returns operations per second; a
    contender that cannot run here has run=None and says why."""
    name: str
    run: Optional[Callable[[], float]] = None
    why: Optional[str] = None


@dataclass
class Workload:
    """A task and everyone who does it. before() runs ahead of each contender's
    run (to warm or drop the page cache) and returns the cache state it verified,
    or None when the workload does not depend on it."""
    name: str
    unit: str
    contenders: list
    before: Optional[Callable[[], Optional[str]]] = None
    cache: set = field(default_factory=set)        # states before() reported
    reference: str = REFERENCE                     # the contender ratios are to

    @property
    def runnable(self):
        return [c for c in self.contenders if c.run is not None]


def missing(module, extra):
    """Why a contender needing `module` cannot run here (None when it can): the
    package extra that installs it."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install 'vyre-uring[{extra}]')"
    return None


def interleave(workloads, rounds, tick=None):
    """Run every runnable contender of every workload once per round, in order
    (A B C A B C ...). Returns {workload: {contender: [rate per round]}}; tick()
    is called after each run (a progress bar)."""
    results = {w.name: {c.name: [] for c in w.runnable} for w in workloads}
    for _ in range(rounds):
        for w in workloads:
            for c in w.runnable:
                if w.before is not None:
                    state = w.before()
                    if state:
                        w.cache.add(state)
                results[w.name][c.name].append(c.run())
                if tick is not None:
                    tick()
    return results


def summarize(values, reference=None):
    """min/median/max of `values`, and against the reference's values of the same
    rounds: the ratio of medians, of the best runs (closest to an unloaded
    machine), and min/median/max of the per-round ratios (drift cancels)."""
    out = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    if reference:
        per_round = [v / r for v, r in zip(values, reference)]
        out.update(ratio=out["median"] / statistics.median(reference),
                   best_ratio=out["max"] / max(reference),
                   per_round=(min(per_round), statistics.median(per_round),
                              max(per_round)))
    return out


def summaries(results, workloads):
    """{workload: {contender: summary}}, ratios to each workload's reference;
    contenders that could not run appear with {"not_available": why}."""
    out = {}
    for w in workloads:
        rows = results.get(w.name, {})
        ref = rows.get(w.reference)
        out[w.name] = {name: summarize(vals, ref) for name, vals in rows.items()}
        for c in w.contenders:
            if c.run is None:
                out[w.name][c.name] = {"not_available": c.why}
    return out


LEGEND = """\
How to read this table: each row is one way of doing the workload; the figures are
rates (operations per second, the unit column), so higher is better. Every
contender ran once per round, interleaved (A B C A B C ...), so machine drift hits
all alike; min, median and max are over the rounds. Ratios are to the workload's
reference ({reference} unless the workload names another), measured in the same
run:
  vs ref     this row's median over the reference's median
  best/best  this row's best round over the reference's best round (the least
             disturbed runs of each)
  per round  min / median / max of the ratios of the same round (drift cancels)
"""


def legend(workloads):
    """The explanation printed above the table; names the references used."""
    others = [f"{w.name}: {w.reference}" for w in workloads if w.reference != REFERENCE]
    text = LEGEND.format(reference=REFERENCE)
    return text + (f"Other references: {'; '.join(others)}.\n" if others else "")


def table(summary, workloads):
    """The terminal table: one row per contender that ran, grouped by workload; those
    that could not run here are listed once at the end, grouped by the reason."""
    wname = max([8] + [len(w.name) for w in workloads])
    cname = max([9] + [len(c.name) for w in workloads for c in w.runnable])
    head = (f"{'workload':<{wname}}  {'contender':<{cname}}  {'unit':<8} {'min':>9} "
            f"{'median':>9} {'max':>9}  {'vs ref':>6}  {'best/best':>9}  "
            f"{'per round min/med/max':>21}")
    lines = [head, "-" * len(head)]
    unavailable = {}                               # why -> [(workload, contender)]
    for w in workloads:
        for name, s in summary[w.name].items():
            if "not_available" in s:
                unavailable.setdefault(s["not_available"], []).append((w.name, name))
                continue
            ratio = best = rounds = "n/a"
            if "ratio" in s:
                ratio, best = f"{s['ratio']:.2f}x", f"{s['best_ratio']:.2f}x"
                rounds = " / ".join(f"{r:.2f}" for r in s["per_round"])
            lines.append(f"{w.name:<{wname}}  {name:<{cname}}  {w.unit:<8} "
                         f"{_rate(s['min'])} {_rate(s['median'])} {_rate(s['max'])}  "
                         f"{ratio:>6}  {best:>9}  {rounds:>21}")
    if unavailable:
        lines.append("\nNot run here:")
        for why, rows in unavailable.items():
            lines.append(f"  {why}:")
            lines += textwrap.wrap(", ".join(f"{c} ({w})" for w, c in rows), width=88,
                                   initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def _rate(x):
    if x >= 1e6:
        return f"{x / 1e6:7.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:7.1f} k"
    return f"{x:9.2f}"


def environment(backend=None):
    """What the figures depend on, recorded with them."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cython": vyre_uring._ring.CYTHON_VERSION,
        "vyre_uring": vyre_uring.__version__,
        "backend": backend,
        "command": " ".join(["vyre-uring", "bench", *sys.argv[2:]])
        if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_json(path, env, rounds, results, summary, workloads):
    doc = {"environment": env, "rounds": rounds,
           "workloads": {w.name: {"unit": w.unit, "cache": sorted(w.cache),
                                  "runs": results.get(w.name, {}),
                                  "summary": summary[w.name]} for w in workloads}}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def plot(path, summary, workloads, env):
    """A bar chart of each contender's ratio (of medians) to C, per workload."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(w.name, name, s["ratio"], name == w.reference) for w in workloads
            for name, s in summary[w.name].items() if "ratio" in s]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.28 * len(rows))))
    labels = [f"{w}: {c}" for w, c, _, _ in rows]
    ax.barh(range(len(rows)), [r for _, _, r, _ in rows],
            color=["#888" if is_ref else "#2a6" for *_, is_ref in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xlabel("rate relative to the workload's reference (C liburing unless named) "
                  "in the same run, median of rounds")
    ax.set_title(f"vyre_uring {env['vyre_uring']}, kernel {env['kernel']}, {env['date']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
