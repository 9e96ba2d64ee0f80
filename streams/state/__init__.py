"""Where a partition's state lives outside memory: see :mod:`streams.state.rocks`."""
