"""What the health endpoints report, and a run's totals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    """Liveness (the loop turns) and readiness (assigned, restored, not rebalancing)."""

    started: bool = False
    rebalancing: bool = False
    restoring: bool = False
    stopping: bool = False
    last_loop: float = field(default_factory=time.monotonic)

    def live(self, max_stall_s: float = 60.0) -> bool:
        """The loop is turning (it passes at least every fetch timeout)."""
        return not self.stopping and time.monotonic() - self.last_loop < max_stall_s

    def ready(self) -> bool:
        """Started, not in a rebalance, not restoring state."""
        return self.started and not (self.rebalancing or self.restoring or self.stopping)


@dataclass
class RunStats:
    """Totals of one worker run (also logged periodically), over all pipelines."""

    consumed: int = 0
    invalid: int = 0
    duplicates: int = 0
    late: int = 0
    emitted: int = 0
    failed: int = 0
    batches: int = 0
    first_batch_at: float = 0.0
    last_batch_at: float = 0.0
