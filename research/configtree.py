"""Config trees shared by the training, evaluation and serving configs: YAML sections of
dataclasses, ``section.key=value`` overrides parsed as YAML scalars, type and choice checks
whose messages say the fix, and a key listing for ``--keys``. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from research.errors import ConfigError

logger = logging.getLogger(__name__)


def option(default: Any, help: str, choices: tuple | None = None,
           aliases: dict | None = None):
    """A dataclass field with its help text and allowed values (shown by :func:`describe`);
    ``aliases`` maps the booleans an older form of the key took to its values."""
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "aliases": aliases or {}})


def sections(root: type) -> dict[str, type]:
    """``{section name: section dataclass}`` of a root config dataclass."""
    hints = typing.get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root)}


def _show(choice: Any) -> str:
    return "null" if choice is None else str(choice)


def _coerce(value: Any, base: type, choices: tuple | None) -> Any:
    """YAML 1.1 quirks: ``1e-6`` is read as a string, ``off`` as False."""
    if base is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if base is str and isinstance(value, bool) and choices and "off" in choices:
        return "on" if value else "off"
    return value


def _check_value(key: str, value: Any, hint: Any, choices: tuple | None,
                 aliases: dict | None = None) -> Any:
    """``value`` for a field of type ``hint``, or a ConfigError naming the expected type."""
    if aliases and isinstance(value, bool) and value in aliases:
        new = aliases[value]
        logger.warning("%s: %s is an older form, read as %s; write %s: %s", key,
                       str(value).lower(), _show(new), key.rpartition(".")[2], _show(new))
        value = new
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    value = _coerce(value, base, choices)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be null: give a {_name(base)}")
    if typing.get_origin(base) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list (e.g. [0, 1]), got {value!r}")
        (item,) = typing.get_args(base)
        return [_check_value(f"{key}[{i}]", v, item, None) for i, v in enumerate(value)]
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          str: isinstance(value, str),
          dict: isinstance(value, dict)}[base]
    if not ok:
        article = "an" if base.__name__[0] in "aeiou" else "a"
        raise ConfigError(f"{key} must be {article} {base.__name__}"
                          f"{' or null' if optional else ''}, "
                          f"got {value!r} ({type(value).__name__})")
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(_show, choices))}; got "
                          f"{value!r}")
    return float(value) if base is float else value


def _name(base: Any) -> str:
    return "list" if typing.get_origin(base) is list else base.__name__


def build_section(name: str, cls: type, values: Any):
    if not isinstance(values, dict):
        raise ConfigError(f"{name} must be a mapping of keys (e.g. {name}: {{...}}), got "
                          f"{values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]}; valid keys of {name}: "
                          f"{', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check_value(f"{name}.{k}", v, hints[k], fields[k].metadata.get("choices"),
                              fields[k].metadata.get("aliases"))
              for k, v in values.items()}
    return cls(**kwargs)


def from_dict(root: type, tree: dict | None, what: str):
    """An instance of the dataclass ``root`` from a (partial) nested mapping of sections."""
    tree = tree or {}
    parts = sections(root)
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} is a mapping of sections ({', '.join(parts)}), "
                          f"got {type(tree).__name__}")
    unknown = sorted(set(tree) - set(parts))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; valid sections: {', '.join(parts)}")
    return root(**{name: build_section(name, parts[name], values or {})
                   for name, values in tree.items()})


def read_yaml(path: Path, what: str) -> dict:
    """The mapping in ``path`` (empty for an empty file)."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(f"{path}: {what} is a mapping of sections")
    return tree or {}


def describe(root: type) -> str:
    """Every key with its default and help, one per line, by section."""
    lines = []
    for name, cls in sections(root).items():
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f.metadata.get("choices")
            extra = f" [{' | '.join(map(_show, choices))}]" if choices else ""
            value = yaml.safe_dump(default, default_flow_style=True).strip()
            value = value.removesuffix("...").strip()
            lines.append(f"  {f.name}: {value}  # {f.metadata['help']}{extra}")
    return "\n".join(lines)


def apply_override(tree: dict, item: str, names: tuple[str, ...] = ()) -> None:
    """Apply one ``section.key=value`` override to ``tree`` (value parsed as a YAML scalar)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        example = f"{names[0]}.KEY=VALUE" if names else "section.key=value"
        raise ConfigError(f"override {item!r} is not section.key=value (e.g. {example}); "
                          f"sections: {', '.join(names)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc}); "
                          "quote it") from None
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    node[parts[-1]] = value


def resolve(path: str | os.PathLike | None, *, named: Mapping[str, Path] | None = None,
            default: Path | None = None) -> Path | None:
    """The file of a ``--config`` value: an existing path, else a named config of the package
    (``named``: name -> file), else a ConfigError that lists the names; ``None`` gives
    ``default`` (``None``: no file, every key at its default)."""
    named = named or {}
    if path is None:
        return default
    if not Path(path).exists() and str(path) in named:
        return named[str(path)]
    if Path(path).is_file():
        return Path(path)
    names = f"the named configs: {', '.join(named)}" if named else "there are no named configs"
    fallback = (f"; without a config the default {default} is used" if default is not None
                else "")
    raise ConfigError(f"config file {path} not found; {names}{fallback}")


def rename_keys(tree: dict, renamed: Mapping[str, str]) -> list[str]:
    """Move each older ``section.key`` of ``tree`` to its key now (``renamed``: older -> now;
    a value already at the new key wins); returns the older keys found."""
    found = []
    for old, new in renamed.items():
        section, _, key = old.partition(".")
        values = tree.get(section)
        if isinstance(values, dict) and key in values:
            found.append(old)
            value = values.pop(key)
            target, _, new_key = new.partition(".")
            tree.setdefault(target, {}).setdefault(new_key, value)
    return found


def load_tree(root: type, path: str | os.PathLike | None, overrides: Sequence[str], what: str,
              *, named: Mapping[str, Path] | None = None, default: Path | None = None,
              relative_to_file: Callable[[dict, Path], None] | None = None,
              renamed: Mapping[str, str] | None = None) -> dict:
    """The config tree of ``path`` (see :func:`resolve`) with ``overrides``
    (``section.key=value``) applied: what :func:`from_dict` builds. ``relative_to_file`` may
    adjust the file's own values (e.g. paths relative to the file) before the overrides;
    ``renamed`` maps an older ``section.key`` to its key now (read with a warning)."""
    file = resolve(path, named=named, default=default)
    tree = {} if file is None else read_yaml(file, what)
    if file is not None and relative_to_file is not None:
        relative_to_file(tree, file.resolve().parent)
    renamed = renamed or {}
    for old in rename_keys(tree, renamed):  # the file's older keys
        logger.warning("%s is an older key, read as %s; write %s", old, renamed[old],
                       renamed[old])
    names = tuple(sections(root))
    for item in overrides:
        key, sep, value = item.partition("=")
        if key.strip() in renamed:
            new = renamed[key.strip()]
            logger.warning("%s is an older key, read as %s; write %s", key.strip(), new, new)
            item = f"{new}{sep}{value}"
        apply_override(tree, item, names)
    return tree
