"""Where a partition's state lives outside memory: see :mod:`streams.state.rocks`."""

ROCKSDB_MISSING = (
    "STREAMS_STORE=rocksdb needs the rocksdict package: pip install 'streams[rocksdb]'"
)
