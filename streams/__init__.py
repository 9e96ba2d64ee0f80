"""streams: an event-streaming framework for Python teams on Apache Kafka.

Declare an app with :class:`App` (topics, pipelines of filters, maps, windows and
aggregations) and run it with ``streams worker module:app``.
"""

__version__ = "0.1.0"

from streams.api import (
    AggregatedStream,
    App,
    Count,
    CountDistinct,
    First,
    Last,
    Max,
    Mean,
    Min,
    Stream,
    Sum,
    Table,
    Topic,
    WindowedStream,
    hopping,
    session,
    tumbling,
)

__all__ = [
    "AggregatedStream",
    "App",
    "Count",
    "CountDistinct",
    "First",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Stream",
    "Sum",
    "Table",
    "Topic",
    "WindowedStream",
    "__version__",
    "hopping",
    "session",
    "tumbling",
]
