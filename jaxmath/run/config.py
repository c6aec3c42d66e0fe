"""Experiment configs: ``configs/<name>.py`` files with ``get_config(variant)``, and overrides.

A config file defines ``get_config(variant: str | None = None) -> ml_collections.ConfigDict``;
its docstring holds the exact command and the expected result. A spec names the file and,
after a colon, the variant (ml_collections' convention)::

    configs/ddpm_2d.py            # get_config()
    configs/ddpm_2d.py:quick      # get_config("quick")
    ddpm_2d:quick                 # the same, looked up in <repo>/configs/

A config declares its variants as settings of dotted keys and ends with
:func:`apply_variant` (the role of big_vision's ``parse_arg``)::

    def get_config(variant=None):
        config = ml_collections.ConfigDict({"num_steps": 600, "model": {"hidden": 128}})
        return apply_variant(config, variant, quick={"num_steps": 10, "model.hidden": 16})

Overrides ``--config.a.b=value`` (or ``a.b=value``) parse like absl/ml_collections flags, to the
type of the field they replace:

=============  ===========================================================================
field type     accepted text
=============  ===========================================================================
``bool``       ``true``/``false``/``t``/``f``/``1``/``0`` (any case), or a bare ``--config.a``
``int``        an integer (``3``, ``-2``, ``1_000``) or an integral float (``1e4``)
``float``      any float (``3e-4``, ``inf``); integers are widened
``str``        the text as given
``tuple``      a Python literal via ``ast.literal_eval`` (``(1, 2)``, ``1,2``); a scalar is a
               1-tuple
``list``       the same, as a list
ConfigDict     a dict literal (``{'a': 1}``) replacing the whole group
placeholder    ``ml_collections.config_dict.placeholder(T)``: parsed as ``T``; ``none`` sets None
``None`` field a Python literal, or the text itself when it is not one
=============  ===========================================================================

Fields linked with ``config.get_ref`` keep ml_collections' semantics: overriding one of them sets
the shared value, and fields computed from a reference (``config.get_ref("n") * 2``) follow it;
overriding a computed field replaces it by the given value. All overrides are checked before any
is applied, and the caller's config is never modified.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import inspect
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

__all__ = [
    "ConfigError",
    "apply_overrides",
    "apply_variant",
    "config_docstring",
    "config_to_dict",
    "find_repo",
    "import_file",
    "load_config",
    "parse_override",
    "resolve_spec",
    "split_spec",
]

_TRUE = ("true", "t", "1")
_FALSE = ("false", "f", "0")
_NONE = ("none", "None")
_MAX_SUGGESTIONS = 3


class ConfigError(ValueError):
    """A config file, variant or override that cannot be used; the message says why, on one line.

    ``jaxmath run`` prints it after ``jaxmath: error:`` and exits with status 2.

    Example:
      >>> isinstance(ConfigError("unknown config key 'sed'"), ValueError)
      True
    """


# ----------------------------------------------------------------------------- files and specs


def split_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"path/to/config.py:variant"`` into the path and the variant (None if absent).

    Example:
      >>> split_spec("configs/ddpm_2d.py:quick")
      ('configs/ddpm_2d.py', 'quick')
      >>> split_spec("configs/ddpm_2d.py")
      ('configs/ddpm_2d.py', None)
    """
    spec = str(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return spec, None


def find_repo(start: str | Path | None = None) -> Path | None:
    """The nearest directory at or above ``start`` (default: cwd) that has a ``configs/`` folder.

    Example:
      >>> find_repo("/") is None or find_repo("/").joinpath("configs").is_dir()
      True
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for directory in (here, *here.parents):
        if (directory / "configs").is_dir():
            return directory
    return None


def resolve_spec(spec: str) -> tuple[Path, str | None]:
    """The config file a spec names, as an absolute path, and its variant.

    A spec that is not a file but a bare name (``ddpm_2d``, ``ddpm_2d:quick``) is looked up in
    the ``configs/`` folder of :func:`find_repo`.

    Raises:
      ConfigError: no such file.

    Example:
      >>> resolve_spec("no/such/config.py:quick")
      Traceback (most recent call last):
      ...
      jaxmath.run.config.ConfigError: config file 'no/such/config.py' not found ...
    """
    path, variant = split_spec(spec)
    candidate = Path(path)
    if candidate.is_file():
        return candidate.resolve(), variant
    if candidate.suffix != ".py" and len(candidate.parts) == 1:
        repo = find_repo()
        if repo is not None and (repo / "configs" / f"{path}.py").is_file():
            return (repo / "configs" / f"{path}.py").resolve(), variant
    raise ConfigError(f"config file {path!r} not found (looked from {Path.cwd()})")


def config_docstring(path: str | Path) -> str:
    """The module docstring of a config file, read without executing it ('' if it has none).

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     p = os.path.join(d, "c.py")
      ...     _ = open(p, "w").write('\"\"\"Echo.\\n\\n    jaxmath run c.py\\n\"\"\"\\n')
      ...     config_docstring(p).splitlines()[0]
      'Echo.'
    """
    source = Path(path).read_text(encoding="utf-8")
    try:
        return ast.get_docstring(ast.parse(source, filename=str(path))) or ""
    except SyntaxError:
        return ""


def import_file(path: str | Path, name: str, *, package: bool = False) -> ModuleType:
    """Import the Python file ``path`` as the module ``name``, by its location (no sys.path).

    importlib's recipe for a source file: ``spec_from_file_location``, ``module_from_spec``,
    an entry in ``sys.modules`` (dataclasses, pickling and relative imports look a module up
    there), ``exec_module``. With ``package``, ``path`` is a package's ``__init__.py`` and its
    folder is the package's search path: ``importlib.import_module(f"{name}.sub")`` then
    loads ``sub.py`` from that folder, and the package's modules may import each other
    relatively (``from ._data import load``). If running the file fails, ``name`` is
    removed from ``sys.modules`` again and the error propagates.

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     p = os.path.join(d, "m.py")
      ...     _ = open(p, "w").write("x = 3\\n")
      ...     import_file(p, "_jaxmath_example_m").x
      3
    """
    path = Path(path)
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if package else None)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_module(path: Path) -> ModuleType:
    """A config file as a module of its own (the same file at two paths: two modules)."""
    try:
        return import_file(path, f"_jaxmath_config_{path.stem}_{abs(hash(str(path))):x}")
    except SyntaxError as e:
        raise ConfigError(f"config file {str(path)!r} line {e.lineno}: {e.msg}") from None
    except ConfigError as e:
        raise ConfigError(f"config file {e}") from None


def _call_get_config(module, path: Path, variant: str | None) -> ml_collections.ConfigDict:
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {str(path)!r} defines no get_config()")
    try:
        takes_variant = bool(inspect.signature(get_config).parameters)
    except (TypeError, ValueError):
        takes_variant = True
    if variant is not None and not takes_variant:
        raise ConfigError(
            f"config file {str(path)!r} has no variants (get_config() takes no argument), "
            f"got variant {variant!r}")
    try:
        config = get_config(variant) if takes_variant else get_config()
    except (ValueError, KeyError) as e:  # e.g. an unknown variant
        raise ConfigError(f"{path.name}: get_config({variant!r}) failed: {e}") from None
    if isinstance(config, dict) and not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path.name}: get_config() must return an ml_collections.ConfigDict, "
            f"got {type(config).__name__}")
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load ``CONFIG[:variant]``, call its ``get_config(variant)`` and apply the overrides.

    Args:
      spec: a path to a config file, optionally followed by ``:variant``; a bare name
        (``ddpm_2d:quick``) is looked up in the ``configs/`` folder of the repository that
        holds the current directory.
      overrides: ``--config.a.b=value`` or ``a.b=value`` strings (see the module docstring).

    Returns:
      The config, overrides applied (fields linked by ``get_ref`` stay linked).

    Raises:
      ConfigError: the file is missing or invalid, the variant is unknown, or an override names
        an unknown key (the message lists the closest valid keys) or has the wrong type. Nothing
        heavier than the config file itself has run when it is raised.

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     p = os.path.join(d, "c.py")
      ...     _ = open(p, "w").write(
      ...         "import ml_collections\\n"
      ...         "def get_config(variant=None):\\n"
      ...         "    return ml_collections.ConfigDict(\\n"
      ...         "        {'seed': 0, 'num_steps': 5 if variant == 'quick' else 500})\\n")
      ...     c = load_config(p + ":quick", ["--config.seed=3"])
      >>> (c.seed, c.num_steps)
      (3, 5)
    """
    path, variant = resolve_spec(spec)
    config = _call_get_config(_load_module(path), path, variant)
    return apply_overrides(config, overrides)


def apply_variant(config: ml_collections.ConfigDict, variant: str | None,
                  **variants: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """``config`` with the settings of the variant named ``variant`` (None: as it is).

    Every config file's ``get_config(variant)`` ends with it: the variants are keyword
    arguments, each a mapping of dotted keys to values (``{"num_steps": 10,
    "model.hidden": 16}``), set in order as ``config.model.hidden = 16`` would set them
    (fields linked by ``get_ref`` follow). ``config`` is changed in place and returned.

    Raises:
      ValueError: an unknown variant, naming the known ones (``jaxmath run`` reports it
        as a config error); ConfigError (a ValueError) for a key the config lacks.

    Example:
      >>> c = ml_collections.ConfigDict({"num_steps": 600, "model": {"hidden": 128}})
      >>> apply_variant(c, "quick", quick={"num_steps": 10, "model.hidden": 16}).model.hidden
      16
      >>> apply_variant(c, "huge", quick={})
      Traceback (most recent call last):
      ...
      ValueError: unknown variant 'huge'; expected None or 'quick'
    """
    if variant is None:
        return config
    if variant not in variants:
        expected = " or ".join(["None", *map(repr, variants)])
        raise ValueError(f"unknown variant {variant!r}; expected {expected}")
    for key, value in variants[variant].items():
        holder, leaf = _locate(config, key)
        holder[leaf] = value
    return config


# ----------------------------------------------------------------------------- overrides


def _split_override(text: str) -> tuple[str, str | None]:
    """``"--config.a.b=v"`` -> ``("a.b", "v")``; ``"--config.a"`` -> ``("a", None)``."""
    body = text.strip()
    if body.startswith("--"):
        body = body[2:]
    if body.startswith("config."):
        body = body[len("config."):]
    key, sep, value = body.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.isidentifier() for p in parts):
        raise ConfigError(
            f"cannot parse override {text!r}: expected --config.a.b=value with a dotted key")
    return key, (value if sep else None)


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, bool]]:
    """Every dotted key, with whether it is a group."""
    keys = []
    for k in config.keys():
        path = f"{prefix}{k}"
        value = config[k]
        is_group = isinstance(value, ml_collections.ConfigDict)
        keys.append((path, is_group))
        if is_group:
            keys.extend(_all_keys(value, path + "."))
    return keys


def _closest(key: str, config: ml_collections.ConfigDict, holder, depth: int) -> list[str]:
    """Up to three valid keys close to ``key``, whose part ``depth`` is missing from ``holder``.

    In order: siblings spelled like the missing part (completed with the rest of the path when
    that exists), values anywhere whose name is spelled like the last part, and values whose
    whole dotted path is spelled like ``key``.
    """
    parts = key.split(".")
    at, missing, rest = parts[:depth], parts[depth], parts[depth + 1:]
    keys = _all_keys(config)
    valid = {k for k, _ in keys}
    leaves = [k for k, is_group in keys if not is_group]
    found = []
    for sibling in difflib.get_close_matches(missing, list(holder.keys()), n=3, cutoff=0.6):
        whole = ".".join([*at, sibling, *rest])
        found.append(whole if whole in valid else ".".join([*at, sibling]))
    by_name: dict[str, list[str]] = {}
    for k in leaves:
        by_name.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    for name in difflib.get_close_matches(parts[-1], list(by_name), n=3, cutoff=0.75):
        found.extend(by_name[name])
    found.extend(difflib.get_close_matches(key, leaves, n=3, cutoff=0.8))
    return list(dict.fromkeys(k for k in found if k != key))[:_MAX_SUGGESTIONS]


def _unknown_key(key: str, config: ml_collections.ConfigDict, holder, depth: int) -> ConfigError:
    close = _closest(key, config, holder, depth)
    if close:
        hint = "closest valid keys: " + ", ".join(close)
    else:
        at = ".".join(key.split(".")[:depth])
        names = sorted(holder.keys())
        where = f"under {at!r}" if at else "at the top level"
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        hint = f"valid keys {where}: {shown}"
    return ConfigError(f"unknown config key {key!r}; {hint}")


def _locate(config: ml_collections.ConfigDict, key: str):
    """The ConfigDict that holds ``key``'s last part, and that part; ConfigError if unknown."""
    holder = config
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if part not in holder:
            raise _unknown_key(key, config, holder, depth)
        child = holder[part]
        if not isinstance(child, ml_collections.ConfigDict):
            group = ".".join(parts[: depth + 1])
            raise ConfigError(f"unknown config key {key!r}: {group!r} is a value of type "
                              f"{type(child).__name__}, not a group")
        holder = child
    if parts[-1] not in holder:
        raise _unknown_key(key, config, holder, len(parts) - 1)
    return holder, parts[-1]


def _literal(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _sequence(text: str) -> list:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if "," in text or " " in text.strip():
            raise ValueError("not a Python literal; quote string elements") from None
        value = text  # a single unquoted string, as absl's TupleParser allows
    if isinstance(value, (tuple, list)):
        return list(value)
    if isinstance(value, (dict, set, frozenset)):
        raise ValueError(f"a {type(value).__name__} is not a sequence")
    return [value]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true/false/1/0")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        value = float(text)  # "1e4": an integral float is accepted
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("not an integer") from None
        return int(value)


def _parse_dict(text: str) -> ml_collections.ConfigDict:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ValueError("expected a dict literal such as {'a': 1}")
    return ml_collections.ConfigDict(value)


_PARSERS = {
    bool: _parse_bool,
    int: _parse_int,
    float: lambda text: float(text.strip()),
    str: lambda text: text,
    tuple: lambda text: tuple(_sequence(text)),
    list: _sequence,
}


def parse_override(text: str | None, field_type: type, *, key: str = "value",
                   current: Any = None) -> Any:
    """Parse ``text`` to ``field_type`` like absl flags do (see the module docstring).

    ``text=None`` is a bare ``--config.key`` flag, which means True for a bool field.

    Example:
      >>> parse_override("1e4", int), parse_override("f", bool), parse_override("1,2", tuple)
      (10000, False, (1, 2))
    """
    if text is None:
        if field_type is bool:
            return True
        raise ConfigError(f"config key {key!r} needs a value: --config.{key}=...")
    if current is None and field_type is not type(None) and text.strip() in _NONE:
        return None  # a placeholder (or None-valued typed field) reset to None
    if field_type is type(None):
        return _literal(text)
    if isinstance(field_type, type) and issubclass(field_type, ml_collections.ConfigDict):
        parser = _parse_dict
    else:
        parser = _PARSERS.get(field_type)
        if parser is None:
            raise ConfigError(
                f"config key {key!r} has type {getattr(field_type, '__name__', field_type)}, "
                "which cannot be set from the command line")
    try:
        return parser(text)
    except (ValueError, TypeError, OverflowError) as e:
        detail = f" ({e})" if str(e) and "could not convert" not in str(e) else ""
        raise ConfigError(
            f"config key {key!r} expects {field_type.__name__}, got {text!r}{detail}") from None


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``--config.a.b=value`` overrides applied, in order.

    Args:
      config: the config from ``get_config``; it is not modified.
      overrides: ``"--config.a.b=value"``, ``"config.a.b=value"`` or ``"a.b=value"`` strings;
        a bare ``"--config.flag"`` sets a bool field to True.

    Returns:
      A deep copy with every override applied (``get_ref`` links preserved within the copy).

    Raises:
      ConfigError: an unknown key (naming it and the closest valid keys, found with difflib),
        a value that does not parse to the field's type (naming key, type and text), or a
        malformed override. No override is applied when any fails.

    Example:
      >>> c = ml_collections.ConfigDict({"seed": 0, "optim": {"learning_rate": 1e-3}})
      >>> apply_overrides(c, ["--config.optim.learning_rate=3e-4", "seed=1"]).optim
      learning_rate: 0.0003
      <BLANKLINE>
      >>> apply_overrides(c, ["--config.optim.learning_rat=3e-4"])
      Traceback (most recent call last):
      ...
      jaxmath.run.config.ConfigError: unknown config key 'optim.learning_rat'; ...
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of strings, got a single string")
    result = copy.deepcopy(config)
    for text in overrides:
        key, value_text = _split_override(text)
        holder, leaf = _locate(result, key)
        current = holder[leaf]
        value = parse_override(value_text, holder.get_type(leaf), key=key, current=current)
        try:
            holder[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key {key!r} cannot take {value_text!r}: {e}") from None
    return result


# ----------------------------------------------------------------------------- serialisation


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON data (references resolved, tuples as lists).

    Example:
      >>> config_to_dict(ml_collections.ConfigDict({"a": (1, 2), "b": {"c": None}}))
      {'a': [1, 2], 'b': {'c': None}}
    """
    return json.loads(config.to_json_best_effort())
