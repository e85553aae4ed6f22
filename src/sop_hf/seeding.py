"""Seeds of the library's random streams: one integer per (seed, epoch or step, stream, rank ...) tuple.

The data pipeline draws view v of sample i in epoch e from ``stream_seed(seed, e, i, v)``; the pretraining models draw
anchors and partitions from ``stream_seed(seed, step, stream, rank)``. Every process computes the same seeds, so no
random state has to be communicated (docs/distributed.md).
"""


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, stream, rank ...), so each random stream is reproducible."""
    value = 0x5DEECE66D
    for part in parts:
        value = (value * 6364136223846793005 + int(part) + 1442695040888963407) % (1 << 63)
    return value
