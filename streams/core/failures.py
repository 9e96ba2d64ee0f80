"""Failures of user code, per operator: what a dead letter says, and what the log says.

Every place where the compiled loop (or a batch step) runs or checks the user's code is a
:class:`Site`: an operator's stage (``map``, ``aggregate``, ...) and where it was declared
(``app.py:12``). A failing event becomes a dead-letter entry ``(stage, reason, where)`` and
the site counts it. The first failure of each site is logged with its full traceback (which
runs through the generated loop's registered source to the user's line); later ones are
counted and summarised at most once per :data:`SUMMARY_EVERY_S` per site, so a poison stream
of a million events logs a line a minute, not a million tracebacks.

A site can also keep the last exception (``capture``): the test driver re-raises it when a
test asks for user errors to be raised.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("streams.user")

SUMMARY_EVERY_S = 60.0
_MAX_REASON = 1_000

# (stage, reason, where): one dead-letter entry of an input record.
Failure = tuple[str, str, str]
# What the generated loops catch from user code: any exception, and a ``sys.exit()`` too (a
# user function must never stop a worker); KeyboardInterrupt and GeneratorExit pass.
USER_ERRORS = (Exception, SystemExit)


def reason(exc: BaseException) -> str:
    """One line for a user function's exception: its type and message."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


class Site:
    """One operator's user code in one compiled segment: its failures, counted and logged."""

    __slots__ = (
        "capture",
        "captured",
        "failures",
        "last_reason",
        "last_summary",
        "logs",
        "pipeline",
        "stage",
        "unreported",
        "where",
    )

    def __init__(self, pipeline: str, stage: str, where: str, *, logs: bool = True) -> None:
        self.pipeline = pipeline
        self.stage = stage
        self.where = where
        # The stream's own checks (a missing key or timestamp field) are the data's fault,
        # counted in metrics like invalid messages, not logged as failures of user code.
        self.logs = logs
        self.failures = 0
        self.unreported = 0
        self.last_summary = 0.0
        self.last_reason = ""
        self.capture = False
        self.captured: BaseException | None = None

    def __repr__(self) -> str:
        return f"Site({self.pipeline!r}, {self.stage!r}, {self.where!r})"

    def fail(self, dead: dict[int, Failure], index: int, exc: BaseException) -> None:
        """The user's code raised ``exc`` on record ``index``: its dead-letter entry (the
        record's first failure wins) and the log."""
        why = reason(exc)
        dead.setdefault(index, (self.stage, why, self.where))
        self._note(why, exc, "the event")

    def fail_many(
        self, dead: dict[int, Failure], indices: list[int], exc: BaseException | None, why: str
    ) -> None:
        """One failure (a batch call) dead-letters these records: each is counted."""
        entry = (self.stage, why, self.where)
        for index in indices:
            dead.setdefault(index, entry)
        if indices:
            self._note(why, exc, f"each of the {len(indices)} events of the batch")
            self.unreported += len(indices) - 1
            self.failures += len(indices) - 1

    def bad(self, dead: dict[int, Failure], index: int, why: str) -> None:
        """The user's code returned something it may not (``why`` says what)."""
        dead.setdefault(index, (self.stage, why, self.where))
        self._note(why, None, "the event")

    def failed(self, exc: BaseException | None, why: str, what: str) -> None:
        """A failure with no input record of its own (``what``: a window's final, ...)."""
        self._note(why, exc, what)

    def _note(self, why: str, exc: BaseException | None, what: str) -> None:
        self.failures += 1
        self.last_reason = why
        if self.capture and self.captured is None:
            self.captured = exc if exc is not None else ValueError(f"{self.where}: {why}")
        if not self.logs:
            return
        if self.failures == 1:
            self.last_summary = time.monotonic()
            log.error(
                "pipeline %s: %s at %s failed (%s); %s is dead-lettered with "
                "error.operator=%s. Later failures here are counted and summarised once a "
                "minute",
                self.pipeline,
                self.stage,
                self.where,
                why,
                what,
                self.where,
                exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
            )
            return
        self.unreported += 1
        self.summarise()

    def summarise(self, *, force: bool = False) -> None:
        """Log the failures since the last summary, if a minute has passed (or ``force``)."""
        if not self.unreported:
            return
        now = time.monotonic()
        if not force and now - self.last_summary < SUMMARY_EVERY_S:
            return
        log.error(
            "pipeline %s: %s at %s failed %d more times in %.0fs (%d in all); the last: %s",
            self.pipeline,
            self.stage,
            self.where,
            self.unreported,
            now - self.last_summary,
            self.failures,
            self.last_reason,
        )
        self.unreported = 0
        self.last_summary = now

    def take_captured(self) -> BaseException | None:
        """The exception kept since the last call (``capture`` on), and forget it."""
        exc, self.captured = self.captured, None
        return exc


class Sites:
    """Every :class:`Site` of a compiled segment, one per (stage, where)."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self._sites: dict[tuple[str, str], Site] = {}

    def get(self, stage: str, where: str, *, logs: bool = True) -> Site:
        """The site of ``stage`` declared at ``where`` (made on first use)."""
        site = self._sites.get((stage, where))
        if site is None:
            site = self._sites[(stage, where)] = Site(self.pipeline, stage, where, logs=logs)
        return site

    def __iter__(self) -> Any:
        return iter(self._sites.values())

    def summarise(self) -> None:
        """Summaries due of every site (the worker calls this between batches)."""
        for site in self._sites.values():
            site.summarise()
