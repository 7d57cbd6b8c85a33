"""Typed configuration: dataclasses loaded from YAML recipes with ``key=value`` overrides.

A recipe is a YAML mapping whose nesting follows the dataclass fields. :func:`load_config` checks every key
and value against the dataclass types, so a typo or a wrong type is one :class:`~endofm.errors.ConfigError`
naming the dotted key (``optim.lr``), before any work starts. :func:`save_config` writes the resolved config
next to a run's outputs.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Recipe:
    ...     lr: float = 1e-3
    ...     epochs: int = 10
    >>> load_config(Recipe, overrides=["lr=0.01", "epochs=3"])
    Recipe(lr=0.01, epochs=3)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import yaml

from endofm.errors import ConfigError
from endofm.io import atomic_write_text

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

T = TypeVar("T")


class Config(Protocol):
    """Any config dataclass of the package (what :func:`config_to_dict` and :func:`save_config` take)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
RECIPE_KINDS = ("pretrain", "finetune")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    result: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: cannot parse the value ({error})") from error
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return result


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked (and lightly converted) against the type ``hint``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {hint}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return _build(hint, value, key + ".")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _default(field: dataclasses.Field) -> Any:
    """The value a dataclass field takes when not given (``MISSING`` for a required field)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _build(cls: type[T], values: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        default = _default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type):
            value = _merge(config_to_dict(default), value)  # a section's keys not given keep the field's default
        kwargs[name] = _convert(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError as error:  # a check of the dataclass; name where it sits unless the message does
        message = str(error)
        if prefix and not message.startswith(prefix):
            message = f"{prefix.rstrip('.')}: {message}"
        raise ConfigError(message) from error
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {error}") from error


def list_recipes(kind: str | None = None) -> list[str]:
    """Names of the recipes shipped inside the package (``pretrain/``, ``finetune/``), e.g. ``cpu_micro``."""
    kinds = (kind,) if kind else RECIPE_KINDS
    root = resources.files("endofm") / "configs"
    return sorted(entry.name[: -len(".yaml")] for k in kinds for entry in (root / k).iterdir()
                  if entry.name.endswith(".yaml"))


def find_recipe(name: str, kind: str | None = None) -> Traversable:
    """The shipped recipe called ``name`` (``cpu_micro``, ``pretrain/cpu_micro`` or ``cpu_micro.yaml``)."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    folder, _, stem = stem.rpartition("/")
    kinds = (folder,) if folder else ((kind,) if kind else RECIPE_KINDS)
    root = resources.files("endofm") / "configs"
    for k in kinds:
        if k in RECIPE_KINDS and (root / k / f"{stem}.yaml").is_file():
            return root / k / f"{stem}.yaml"
    known = ", ".join(list_recipes(kind)) or "none"
    raise ConfigError(f"config {name!r}: no such file, and no shipped recipe of that name (shipped: {known})")


def resolve_recipe(path: str | os.PathLike, kind: str | None = None) -> Path | Traversable:
    """A recipe argument as a file: an existing path as it is, otherwise a shipped recipe's name."""
    if Path(path).is_file():
        return Path(path)
    return find_recipe(str(path), kind)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                kind: str | None = None) -> T:
    """Build ``cls`` from its defaults, then a recipe, then ``key=value`` overrides.

    ``path`` is a YAML file or the name of a shipped recipe (``cpu_micro``; ``kind`` narrows the search to
    ``pretrain`` or ``finetune``).
    """
    values: dict = {}
    if path is not None:
        path = resolve_recipe(path, kind)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return _build(cls, _merge(values, parse_overrides(overrides)))


def config_to_dict(config: Config) -> dict:
    """Plain-YAML form of a config dataclass (tuples as lists, init-only fields left out)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def save_config(config: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically; :func:`load_config` reads it back to the same value."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
