"""``Topic`` and ``Table``: the handles ``app.topic(...)`` and ``app.table(...)`` return."""

from __future__ import annotations

from streams.topology import nodes


class Topic:
    """A topic of JSON objects; see :meth:`streams.api.app.App.topic`."""

    def __init__(self, decl: nodes.TopicDecl) -> None:
        self.decl = decl

    @property
    def name(self) -> str:
        """The topic's name."""
        return self.decl.name

    def __repr__(self) -> str:
        return f"Topic({self.name!r})"


class Table:
    """A compacted topic every worker holds whole; see :meth:`streams.api.app.App.table`."""

    def __init__(self, decl: nodes.TableDecl) -> None:
        self.decl = decl

    @property
    def name(self) -> str:
        """The topic's name."""
        return self.decl.name

    def __repr__(self) -> str:
        return f"Table({self.name!r})"
