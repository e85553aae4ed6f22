"""The last line of a run: trained k-NN top-1 against the same architecture at random init, judged against noise.

A gain means something only when it exceeds what changing the seed alone moves. The demo measures that spread
(README, docs/training.md): over seeds 0, 1, 2 the random-init k-NN top-1 is 47.9, 46.8 and 46.9 % (46.2 % at the
default seed), a range of 1.7 points, while the trained gains are +18.0, +15.0 and +17.7 points.

>>> knn_verdict(0.65, 0.462)
'+18.8 points over random init: learned'
>>> knn_verdict(0.464, 0.462)
'+0.2 points: within noise (seed-to-seed spread of random init is about 2 points); train longer'
"""

RANDOM_INIT_SPREAD_POINTS = 2.0
"""Seed-to-seed spread of the demo's random-init k-NN top-1, in percentage points: 46.2-47.9 % over the default seed
and seeds 0/1/2 (a 1.7-point range, rounded up). A gain of at most this much is within noise. Measure it again (e.g.
``benchmarks/quality.py``) before trusting it on data far from the demo's 1,000-image Fashion-MNIST test split."""


def knn_verdict(trained: float, baseline: float, spread_points: float = RANDOM_INIT_SPREAD_POINTS) -> str:
    """``"+18.8 points over random init: learned"``, or within noise, or worse, for top-1 fractions in [0, 1]."""
    gain = round(100 * (trained - baseline), 1)  # judged as printed: "+2.0 points" is never "learned"
    if gain > spread_points:
        return f"{gain:+.1f} points over random init: learned"
    if gain >= -spread_points:
        return (f"{gain:+.1f} points: within noise (seed-to-seed spread of random init is about {spread_points:g} "
                "points); train longer")  # fmt: skip
    return (
        f"{gain:+.1f} points: worse than random init (beyond the {spread_points:g}-point seed-to-seed spread); "
        "train longer, and check the curves for collapse"
    )  # short runs often dip below random init first


__all__ = ["RANDOM_INIT_SPREAD_POINTS", "knn_verdict"]
