"""Building blocks the pretraining methods assemble: projection heads, memory banks, learnable prototypes and the
collectives that keep processes in step."""

from .heads import SOPHead
from .memory_bank import MemoryBank
from .prototypes import WeightNormalizedPrototypes

__all__ = ["MemoryBank", "SOPHead", "WeightNormalizedPrototypes"]
