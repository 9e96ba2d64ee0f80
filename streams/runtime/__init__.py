"""The thin async runtime around the pure core: a worker process's parts, by name.

- :mod:`~streams.runtime.worker` — the poll loop: fetch, process, commit, tick, stop;
- :mod:`~streams.runtime.tasks` — one task per assigned input partition, created, kept and
  closed across rebalances;
- :mod:`~streams.runtime.restorer` — state rebuilt from changelogs, a bounded step per turn
  of the poll loop (``ChangelogReader``);
- :mod:`~streams.runtime.collector` — outcomes into records: outputs, dead letters, late
  events, changelogs, poison outputs (remembered in :mod:`~streams.runtime.poison`);
- :mod:`~streams.runtime.committer` — at_least_once (outputs, then changelog, then offsets)
  and exactly_once (one transaction per input partition and batch);
- :mod:`~streams.runtime.tables` — ``app.table`` topics held whole and followed;
- :mod:`~streams.runtime.calls` — ``async`` batch functions awaited once per batch;
- :mod:`~streams.runtime.topics` — the plan's topics made to exist and checked;
- :mod:`~streams.runtime.health`, :mod:`~streams.runtime.metrics` — what operators see.
"""
