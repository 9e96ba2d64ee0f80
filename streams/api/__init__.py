"""What users import to declare an app: ``App``, windows and aggregations.

See ``streams/api/app.py`` for topics, tables and streams, ``streams/api/stream.py`` for the
operators, and the README's "Write your own pipeline".
"""

from streams.api.app import App, Table, Topic
from streams.api.stream import AggregatedStream, Stream, WindowedStream
from streams.api.windows import hopping, session, sliding, tumbling
from streams.topology.aggregations import (
    Count,
    CountDistinct,
    First,
    Last,
    Max,
    Mean,
    Min,
    Sum,
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
    "hopping",
    "session",
    "sliding",
    "tumbling",
]
