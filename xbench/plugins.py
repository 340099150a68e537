"""User code named in task files: metric functions, loaders and evaluate modules.

A task file names Python code by dotted path, either ``package.module:name``
or ``package.module.name``. A module that is not importable the usual way is
also looked up in the folders of the task files that xbench has read, so a
``my_metrics.py`` beside a task file needs no install and no PYTHONPATH.

Evaluate modules are given by local path (a folder holding ``NAME.py``, or
the script itself) or by Hugging Face Hub id. A hub id needs the network.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED_PATH = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*(:{_IDENTIFIER}(\.{_IDENTIFIER})*)?$")

_TRUE_VALUES = ("1", "true", "yes", "on")

# Folders of the task files read so far, searched last for user modules.
_search_dirs: list[Path] = []
_evaluate_modules: dict[str, Any] = {}


class PluginError(ValueError):
    """User code named in a task file that cannot be imported, loaded or called."""


def add_search_dir(folder: Path | str) -> None:
    """Let modules in ``folder`` be imported by dotted paths in task files."""
    folder = Path(folder).resolve()
    if folder not in _search_dirs:
        _search_dirs.append(folder)


def is_dotted_path(text: object) -> bool:
    """Tell whether ``text`` has the shape ``module:name`` or ``module.name``."""
    return isinstance(text, str) and ("." in text or ":" in text) and bool(_DOTTED_PATH.match(text))


def split_dotted_path(text: str) -> tuple[str, str]:
    """Split a dotted path into the module name and the attribute path."""
    if ":" in text:
        module, attribute = text.split(":", 1)
    else:
        module, _, attribute = text.rpartition(".")
    return module, attribute


def attribute_name(text: str) -> str:
    """Return the last name of a dotted path, e.g. ``my_f1`` for ``pkg.metrics:my_f1``."""
    return split_dotted_path(text)[1].rsplit(".", 1)[-1]


def _module_file_in(folder: Path, top_level: str) -> bool:
    return (folder / f"{top_level}.py").is_file() or (folder / top_level / "__init__.py").is_file()


def _import_module(module_name: str, role: str, spec: str):
    top_level = module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name == error.name or module_name.startswith(error.name + ".")):
            raise PluginError(
                f"{role} {spec!r}: importing module {module_name!r} failed because it imports "
                f"{error.name!r}, which is not installed. Install it, or remove that import."
            ) from error
        missing = error
    except Exception as error:  # noqa: BLE001 - user code may raise anything on import
        raise PluginError(f"{role} {spec!r}: importing module {module_name!r} raised {type(error).__name__}: {error}") from error

    for folder in _search_dirs:
        if _module_file_in(folder, top_level):
            if str(folder) not in sys.path:
                # Appended, so a module beside a task file never shadows an installed one.
                sys.path.append(str(folder))
                logger.debug("Added %s to sys.path for %s", folder, spec)
            importlib.invalidate_caches()
            return _import_module_again(module_name, role, spec)
    searched = ", ".join(str(folder) for folder in _search_dirs) or "no task folder"
    raise PluginError(
        f"{role} {spec!r}: no module named {missing.name!r}. Install the package that provides it, put "
        f"{top_level}.py beside the task file (searched: {searched}), or add its folder to PYTHONPATH."
    ) from missing


def _import_module_again(module_name: str, role: str, spec: str):
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - user code may raise anything on import
        raise PluginError(f"{role} {spec!r}: importing module {module_name!r} raised {type(error).__name__}: {error}") from error


def import_object(spec: str, role: str = "object") -> Any:
    """Import the object that a dotted path names.

    ``role`` names the object's use in error messages, e.g. "metric".
    Raises :class:`PluginError` with the module or attribute that is missing.
    """
    if not is_dotted_path(spec):
        raise PluginError(
            f"{role} {spec!r} is not a dotted path. Write 'package.module:function' or 'package.module.function'."
        )
    module_name, attribute = split_dotted_path(spec)
    target = _import_module(module_name, role, spec)
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(name for name in dir(target) if not name.startswith("_") and callable(getattr(target, name, None)))
            listing = f" Callables there: {', '.join(public)}." if public else ""
            raise PluginError(f"{role} {spec!r}: {module_name!r} has no attribute {part!r}.{listing}")
        target = getattr(target, part)
    return target


def import_callable(spec: str, role: str) -> Callable:
    """Import a dotted path and check that it names something callable."""
    target = import_object(spec, role)
    if not callable(target):
        raise PluginError(f"{role} {spec!r} is a {type(target).__name__}, not a function. Name a function.")
    return target


# --------------------------------------------------------------------------
# evaluate modules
# --------------------------------------------------------------------------


def is_local_evaluate_location(location: str, base_dir: Path | None = None) -> bool:
    """Tell a local evaluate module path from a hub id such as ``accuracy``.

    Paths start with ``.``, ``/`` or ``~``, end with ``.py``, or exist
    relative to ``base_dir`` (the task file's folder).
    """
    if location.startswith((".", "/", "~")) or location.endswith(".py"):
        return True
    return base_dir is not None and (Path(base_dir) / location).exists()


def hub_offline_reason() -> str | None:
    """Return why evaluate cannot use the Hugging Face Hub, or None when the Hub is reachable."""
    value = os.environ.get("HF_EVALUATE_OFFLINE", "")
    if value.strip().lower() in _TRUE_VALUES:
        return f"hub access is disabled (HF_EVALUATE_OFFLINE={value})"
    from .data import hub_unreachable_reason

    return hub_unreachable_reason()


def local_evaluate_problem(location: str) -> str | None:
    """Return role is wrong with a local evaluate module path, or None.

    evaluate loads a folder only when it contains a script named after the
    folder, e.g. ``my_metric/my_metric.py``.
    """
    path = Path(location).expanduser()
    if path.is_file():
        return None if path.suffix == ".py" else f"{path} is not a Python script (.py)."
    if path.is_dir():
        script = path / f"{path.name}.py"
        return None if script.is_file() else f"folder {path} has no script {script.name}; evaluate loads FOLDER/FOLDER.py."
    return f"{path} does not exist."


def load_evaluate_module(location: str) -> Any:
    """Load an evaluate module from a local path or a hub id, once per process.

    A hub id fails fast when the hub is unreachable, naming the local-path
    alternative, because evaluate itself would wait on network retries.
    """
    if location in _evaluate_modules:
        return _evaluate_modules[location]
    if is_local_evaluate_location(location):
        problem = local_evaluate_problem(location)
        if problem:
            raise PluginError(f"evaluate module {location!r}: {problem}")
    else:
        reason = hub_offline_reason()
        if reason:
            raise PluginError(
                f"evaluate module {location!r} is a hub id, but {reason}. To run offline, copy the module "
                f"folder (with its {location.rsplit('/', 1)[-1]}.py script) next to the task file while online "
                f"and name it by local path, e.g. 'evaluate: ./{location.rsplit('/', 1)[-1]}'."
            )
    try:
        import evaluate
    except ImportError as error:
        raise PluginError(f"evaluate module {location!r}: the evaluate package is not installed (pip install evaluate).") from error
    try:
        module = evaluate.load(str(Path(location).expanduser()) if is_local_evaluate_location(location) else location)
    except Exception as error:  # noqa: BLE001 - evaluate and the module script may raise anything
        raise PluginError(f"evaluate module {location!r} failed to load: {type(error).__name__}: {error}") from error
    _evaluate_modules[location] = module
    return module
