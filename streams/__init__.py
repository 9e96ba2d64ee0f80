"""streams: an event-streaming pipeline for Python teams on Apache Kafka."""

__version__ = "0.1.0"
