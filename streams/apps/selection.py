"""The app a command runs: ``APP`` as given, else ``STREAMS_APP``, else the reference pipeline.

``streams worker``, ``verify``, ``topics create``, ``reset`` and ``explain`` take the same
``APP`` argument; this is where it becomes an app and a plan. It sits above the API (it
loads a user's module with :func:`streams.api.loading.load_app`) and beside the apps
streams ships, so that neither the API nor the runtime has to know about either.
"""

from __future__ import annotations

import dataclasses
import os

from streams.api.loading import load_app
from streams.config import Settings
from streams.topology.plan import Plan, plan


def plan_for(settings: Settings, spec: str | None = None) -> tuple[Plan, Settings]:
    """The app to run (``spec``, else ``STREAMS_APP``, else the reference pipeline), checked
    and planned, and the settings with its app id: ``STREAMS_APP_ID`` if set, else the app's
    name. A bad declaration raises one :class:`~streams.errors.DeclarationError` here,
    before anything connects."""
    spec = spec or settings.app
    if spec is None:
        from streams.apps.reference import build

        return plan(build(settings).decl, settings.app_id), settings
    app = load_app(spec)
    settings = dataclasses.replace(
        settings, app_id=os.environ.get("STREAMS_APP_ID") or app.name, app=spec
    )
    return plan(app.decl, settings.app_id), settings
