"""The knobs of the processing core, checked once so the hot path can trust them."""

from __future__ import annotations

from dataclasses import dataclass

from streams.errors import ConfigError


@dataclass(frozen=True)
class CoreConfig:
    """Windowing, lateness, idleness and dedupe parameters of one partition processor.

    ``window_step_ms == window_size_ms`` gives tumbling windows, a smaller step hopping ones.
    ``emit_updates`` adds a non-final record per changed open window at the end of each batch.
    """

    window_size_ms: int = 60_000
    window_step_ms: int = 60_000
    grace_ms: int = 10_000
    idle_timeout_ms: int = 30_000
    dedupe_horizon_ms: int = 3_600_000
    emit_updates: bool = False

    def __post_init__(self) -> None:
        if self.window_size_ms < 1:
            raise ConfigError(f"window size {self.window_size_ms} ms must be at least 1 ms")
        if not 1 <= self.window_step_ms <= self.window_size_ms:
            raise ConfigError(
                f"window step {self.window_step_ms} ms must be between 1 ms and the window "
                f"size {self.window_size_ms} ms"
            )
        if self.grace_ms < 0:
            raise ConfigError(f"grace {self.grace_ms} ms must not be negative")
        if self.idle_timeout_ms < 1:
            raise ConfigError(f"idle timeout {self.idle_timeout_ms} ms must be at least 1 ms")
        if self.dedupe_horizon_ms < 0:
            raise ConfigError(f"dedupe horizon {self.dedupe_horizon_ms} ms must not be negative")
