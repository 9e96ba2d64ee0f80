"""Loading a user's app: ``module:attribute`` or ``path.py[:attribute]``.

``streams worker orders_app:app`` imports ``orders_app`` (the working directory is on the
path) and takes its ``app``; ``streams worker apps/orders.py`` runs a file. Without an
attribute, the module's only :class:`~streams.api.app.App` is taken. Every failure (no such
module, an exception while importing it, no app in it) is one line saying what to fix.
Which app a command runs (the reference pipeline when none is named) is decided in
:mod:`streams.apps.selection`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from streams.api.app import App
from streams.errors import DeclarationError, StreamsError


def load_app(spec: str) -> App:
    """The App named by ``spec``."""
    module_part, _, attribute = spec.partition(":")
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        module = _import_file(Path(module_part), spec)
    else:
        module = _import_module(module_part, spec)
    return _find_app(module, attribute or None, spec)


def _import_module(name: str, spec: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except StreamsError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == name or (exc.name and name.startswith(exc.name + ".")):
            raise DeclarationError(
                f"app {spec!r}: no module {name!r} in {cwd} or on PYTHONPATH; run from the "
                "directory that holds it, or pass a path: streams worker path/to/app.py"
            ) from None
        raise DeclarationError(_import_failure(spec, exc)) from None
    except Exception as exc:
        raise DeclarationError(_import_failure(spec, exc)) from None


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise DeclarationError(f"app {spec!r}: file {path} does not exist; fix the path")
    name = f"streams_app_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    assert loader_spec is not None
    assert loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        loader_spec.loader.exec_module(module)
    except StreamsError:
        raise
    except Exception as exc:
        raise DeclarationError(_import_failure(spec, exc)) from None
    return module


def _import_failure(spec: str, exc: BaseException) -> str:
    """One line: the exception and the app's own line it came from."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"app {spec!r} failed to import: {type(exc).__name__}: {exc}{where}; fix it"


def _find_app(module: ModuleType, attribute: str | None, spec: str) -> App:
    if attribute is not None:
        found = getattr(module, attribute, None)
        if found is None:
            raise DeclarationError(
                f"app {spec!r}: module {module.__name__} has no attribute {attribute!r}"
            )
        if not isinstance(found, App):
            raise DeclarationError(
                f"app {spec!r}: {attribute} is a {type(found).__name__}, not a streams App"
            )
        return found
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise DeclarationError(
            f"app {spec!r}: module {module.__name__} defines no streams App; declare "
            "app = App('name') in it"
        )
    raise DeclarationError(
        f"app {spec!r}: module {module.__name__} defines {len(apps)} Apps; name one, e.g. "
        f"{spec}:app"
    )
