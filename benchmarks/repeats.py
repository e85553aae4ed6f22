"""Median and range over repeated benchmark runs, the form in which docs/performance.md quotes every figure.

>>> summarize([2.35, 2.51, 2.40])
{'median': 2.4, 'min': 2.35, 'max': 2.51, 'n': 3}
>>> fmt_summary(summarize([2.35, 2.51, 2.40]), "{:.2f}")
'2.40 (2.35-2.51, n=3)'
"""

import statistics


def summarize(values: list[float]) -> dict:
    """Median, min, max and count of one figure over independent runs."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_summary(summary: dict, spec: str = "{:.3g}") -> str:
    """``median (min-max, n=N)``; a single run prints its value and ``n=1``."""
    if summary["n"] == 1:
        return f"{spec.format(summary['median'])} (n=1)"
    lo, hi = spec.format(summary["min"]), spec.format(summary["max"])
    return f"{spec.format(summary['median'])} ({lo}-{hi}, n={summary['n']})"


def summarize_runs(runs: list[dict], keys: list[str]) -> dict:
    """For each key, the summary of that key's value over ``runs`` (a list of one result dict per run)."""
    return {key: summarize([run[key] for run in runs]) for key in keys}


def print_runs(runs: list[dict], spec: str = "{:.2f}") -> None:
    """``key: value`` per numeric key: the value of a single run, else ``median (min-max, n=N)``."""
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary = summarize([run[key] for run in runs])
            print(f"{key}: {spec.format(value)}" if len(runs) == 1 else f"{key}: {fmt_summary(summary, spec)}")
