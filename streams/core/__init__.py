"""The pure processing core: per-partition dedupe, lateness, windowed aggregation and emission.

No Kafka, no asyncio, no I/O: plain values in, plain values out. The async shell feeds it one
batch at a time per input partition and persists its changelog records.
"""

from streams.core.config import CoreConfig
from streams.core.processor import BatchOutcome, PartitionProcessor
from streams.core.reference import Recomputed, recompute, recompute_partition

__all__ = [
    "BatchOutcome",
    "CoreConfig",
    "PartitionProcessor",
    "Recomputed",
    "recompute",
    "recompute_partition",
]
