"""streams: an event-streaming framework for Python teams on Apache Kafka.

Declare an app with :class:`App` (topics, pipelines of filters, maps, windows and
aggregations) and run it with ``streams worker module:app``.
"""

__version__ = "0.1.0"

from streams import api
from streams.api import *  # noqa: F403

__all__ = [*api.__all__, "__version__"]
