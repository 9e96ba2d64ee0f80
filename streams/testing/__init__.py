"""Testing apps without a broker: :class:`TestDriver` (see :mod:`streams.testing.driver`)."""

from streams.testing.driver import Record, TestDriver

__all__ = ["Record", "TestDriver"]
