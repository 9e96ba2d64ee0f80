"""The pure processing core: compiled segments, their state, and the plain interpreter.

No Kafka, no asyncio, no I/O: plain values in, plain values out. The runtime feeds a
:class:`~streams.core.segment.SegmentTask` one chunk at a time per input partition and
persists its changelog records; :mod:`streams.core.interpreter` is the slow model both the
property tests and ``streams verify`` hold it to.
"""

from streams.core.config import CoreConfig

__all__ = ["CoreConfig"]
