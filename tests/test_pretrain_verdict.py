"""The demo's last line: the k-NN gain over random init judged against the seed-to-seed spread it knows."""

import pytest

from sop_hf.pretrain import RANDOM_INIT_SPREAD_POINTS, knn_verdict

# Measured on the demo (README, docs/training.md): random-init k-NN top-1 at the default seed and seeds 0, 1, 2, and the
# trained gains of seeds 0, 1, 2.
RANDOM_INIT_TOP1 = (46.2, 47.9, 46.8, 46.9)
DEMO_GAINS = (18.0, 15.0, 17.7)


def test_spread__covers_the_measured_random_init_range_and_stays_far_below_the_demo_gains():
    assert max(RANDOM_INIT_TOP1) - min(RANDOM_INIT_TOP1) <= RANDOM_INIT_SPREAD_POINTS < min(DEMO_GAINS) / 5


@pytest.mark.parametrize("trained, baseline, expected", [
    (0.650, 0.462, "+18.8 points over random init: learned"),
    (0.464, 0.462, "+0.2 points: within noise (seed-to-seed spread of random init is about 2 points); train longer"),
    (0.482, 0.462, "+2.0 points: within noise (seed-to-seed spread of random init is about 2 points); train longer"),
    (0.483, 0.462, "+2.1 points over random init: learned"),
    (0.450, 0.462, "-1.2 points: within noise (seed-to-seed spread of random init is about 2 points); train longer"),
    (0.400, 0.462, "-6.2 points: worse than random init (beyond the 2-point seed-to-seed spread); train longer, and "
                   "check the curves for collapse"),
])  # fmt: skip
def test_knn_verdict__learned_within_noise_or_worse(trained, baseline, expected):
    assert knn_verdict(trained, baseline) == expected


def test_knn_verdict__takes_another_measured_spread():
    assert knn_verdict(0.50, 0.46, spread_points=5.0).startswith(
        "+4.0 points: within noise (seed-to-seed spread of random init is about 5 points)"
    )
