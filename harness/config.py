"""Typed run configs: dataclasses loaded from YAML with dotted `key=value` overrides.

Sections whose class depends on a registry name (the method, the backbone, the critic, each
benchmark, the judge) are declared with `poly("<kind>", default_name)`; the `name` key picks the
registry entry, whose `Spec.config` is the dataclass and whose `Spec.defaults` make variants.

Every mistake is reported before any work starts, naming the source (file or override),
the dotted key, and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from harness import registry


class ConfigError(ValueError):
    pass


class FieldError(ValueError):
    """A validate() error about one field of its section: the loader prefixes where the value was
    written (file and line, or the command line) and the dotted key."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_range(obj: Any, name: str, *, gt: float | None = None, ge: float | None = None,
                lt: float | None = None, le: float | None = None, note: str = "") -> None:
    """FieldError unless getattr(obj, name) lies in the range; the message states the range."""
    value = getattr(obj, name)
    values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    ok = all((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) and (le is None or v <= le)
             for v in values)
    if ok:
        return
    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    bounds = []
    if gt is not None or ge is not None:
        bounds.append(f"> {num(gt)}" if gt is not None else f">= {num(ge)}")
    if lt is not None or le is not None:
        bounds.append(f"< {num(lt)}" if lt is not None else f"<= {num(le)}")
    kind = "an integer" if isinstance(next(iter(values), 0), int) else "a number"
    each = "each value " if isinstance(value, (dict, list, tuple)) else ""
    raise FieldError(name, f"got {value!r}; allowed: {each}{kind} {' and '.join(bounds)}" + (f" ({note})" if note else ""))


# ---------------------------------------------------------------------------------------------
# Field helpers


def nohash(default: Any = MISSING, *, default_factory: Any = MISSING, help: str = "") -> Any:
    """A field that does not change results (workers, log intervals, output paths): left out of the run id."""
    kw: dict[str, Any] = {"metadata": {"hash": False, "help": help}}
    if default_factory is not MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return field(**kw)


def poly(kind: str, default: str | None, **default_values: Any) -> Any:
    """A section whose dataclass is chosen by its `name` among the `kind` registry's entries."""
    reg = _registry(kind)

    def make() -> Any:
        if default is None:
            return None
        return build_section(reg, {"name": default, **default_values}, source="<defaults>", prefix=kind)

    return field(default_factory=make, metadata={"registry": kind})


def poly_list(kind: str, *defaults: str) -> Any:
    reg = _registry(kind)

    def make() -> list[Any]:
        return [build_section(reg, {"name": d}, source="<defaults>", prefix=kind) for d in defaults]

    return field(default_factory=make, metadata={"registry": kind})


def _registry(kind: str) -> registry.Registry:
    regs = {
        "method": registry.METHODS,
        "backbone": registry.BACKBONES,
        "critic": registry.CRITICS,
        "benchmark": registry.BENCHMARKS,
        "judge": registry.JUDGES,
    }
    return regs[kind]


# ---------------------------------------------------------------------------------------------
# dict -> dataclass


class Overrides(frozenset):
    """The dotted keys set by overrides, and where the overrides came from (for error messages)."""

    label = "command-line override"

    def __new__(cls, keys=(), label: str | None = None):
        obj = super().__new__(cls, keys)
        if label:
            obj.label = label
        return obj


class Source(str):
    """The name of a config's source (a file), with where each dotted key of it was written
    ('file:line'), so that an error points at the line."""

    def __new__(cls, name: str, lines: dict[str, str] | None = None) -> "Source":
        obj = super().__new__(cls, name)
        obj.lines = dict(lines or {})
        return obj


def _line_of(source: str, key: str) -> str | None:
    lines = getattr(source, "lines", None)
    if not lines:
        return None
    k = key
    while k:
        if k in lines:
            return lines[k]
        k = k.rsplit(".", 1)[0] if "." in k else (k.rsplit("[", 1)[0] if "[" in k else "")
    return None


def _overridden(key: str, override_keys: frozenset[str]) -> bool:
    return any(key == k or key.startswith((k + ".", k + "[")) for k in override_keys)


def _where(source: str, key: str, override_keys: frozenset[str]) -> str:
    if _overridden(key, override_keys):
        return f"{getattr(override_keys, 'label', 'command-line override')}: key '{key}'"
    return f"{_line_of(source, key) or source}: key '{key}'"


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str, ov: frozenset[str]) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source, ov)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{_where(source, key, ov)}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{_where(source, key, ov)}: {value!r} is not allowed; allowed: {allowed}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(source, key, ov)}: expected a list, got {value!r}")
        (item,) = args or (Any,)
        return [_coerce(v, item, f"{key}[{i}]", source, ov) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, key, ov)}: expected a mapping, got {value!r}")
        kt, vt = args or (str, Any)
        return {_coerce(k, kt, key, source, ov): _coerce(v, vt, f"{key}.{k}", source, ov) for k, v in value.items()}
    if is_dataclass(tp):
        return _from_dict(tp, value, source, key, ov)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(source, key, ov)}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(source, key, ov)}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads '2e-6' as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        raise ConfigError(f"{_where(source, key, ov)}: expected a number, got {value!r}; allowed: a finite number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{_where(source, key, ov)}: expected a string, got {value!r}")
    raise ConfigError(f"{_where(source, key, ov)}: unsupported field type {_type_name(tp)}")


def check_literals(obj: Any) -> None:
    """ValueError naming the field and its allowed values when a Literal-typed field of the dataclass
    `obj` holds another value (the loader checks this for configs read from files; this is for
    dataclasses built in code)."""
    for name, tp in typing.get_type_hints(type(obj)).items():
        if get_origin(tp) is Literal and getattr(obj, name) not in get_args(tp):
            raise ValueError(f"{name} must be one of {get_args(tp)}, got {getattr(obj, name)!r}")


def _from_dict(cls: type, data: Any, source: str, prefix: str, ov: frozenset[str] = frozenset()) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, prefix or '<top>', ov)}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = [k for k in data if k not in known]
    if unknown:
        k = unknown[0]
        dotted = f"{prefix}.{k}" if prefix else str(k)
        allowed = ", ".join(sorted(known))
        raise ConfigError(f"{_where(source, dotted, ov)}: unknown key; allowed keys here: {allowed}")
    kwargs = {}
    for name, f in known.items():
        dotted = f"{prefix}.{name}" if prefix else name
        kind = f.metadata.get("registry")
        if name not in data:
            continue
        value = data[name]
        if kind is not None:
            reg = _registry(kind)
            if isinstance(value, list):
                kwargs[name] = [_section(reg, v, source, f"{dotted}[{i}]", ov) for i, v in enumerate(value)]
            elif value is None:
                kwargs[name] = None
            else:
                kwargs[name] = _section(reg, value, source, dotted, ov)
        else:
            kwargs[name] = _coerce(value, hints[name], dotted, source, ov)
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{source}: section '{prefix or '<top>'}': {e}") from e
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError:
            raise
        except FieldError as e:
            raise ConfigError(f"{_where(source, _join(prefix, e.field), ov)}: {e}") from None
        except (ValueError, AssertionError) as e:
            key = _mentioned_field(cls, str(e), prefix, ov)
            where = _where(source, _join(prefix, key), ov) if key else f"{source}: section '{prefix or '<top>'}'"
            raise ConfigError(f"{where}: {e}") from e
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _mentioned_field(cls: type, message: str, prefix: str, ov: frozenset[str]) -> str | None:
    """The field of `cls` a validate() message is about (the first it names; one set on the command
    line first), so the message can say where its value came from."""
    found = []
    for f in fields(cls):
        m = re.search(rf"(?<![\w]){re.escape(f.name)}(?![\w])", message)
        if m:
            found.append((m.start(), f.name))
    names = [n for _, n in sorted(found)]
    return next((n for n in names if _overridden(_join(prefix, n), ov)), names[0] if names else None)


def _section(reg: registry.Registry, value: Any, source: str, prefix: str, ov: frozenset[str]) -> Any:
    if isinstance(value, str):
        value = {"name": value}
    if is_dataclass(value):
        return value
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(
            f"{_where(source, prefix, ov)}: expected a mapping with a 'name' "
            f"(one of: {', '.join(reg.names())}), got {value!r}"
        )
    return build_section(reg, value, source, prefix, ov)


def build_section(
    reg: registry.Registry, value: dict, source: str, prefix: str, ov: frozenset[str] = frozenset()
) -> Any:
    name = value["name"]
    try:
        spec = reg.get(name)
    except registry.RegistryError as e:
        raise ConfigError(f"{_where(source, prefix + '.name', ov)}: {e}") from None
    merged = {**spec.defaults, **value}
    return _from_dict(spec.config, merged, source, prefix, ov)


def from_dict(cls: type, data: dict, source: str = "<dict>", override_keys: frozenset[str] = frozenset()) -> Any:
    return _from_dict(cls, data, source, "", override_keys)


# ---------------------------------------------------------------------------------------------
# dataclass -> dict, hashing


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def to_dict(obj: Any, *, for_hash: bool = False) -> Any:
    if is_dataclass(obj):
        out = {}
        for f in fields(obj):
            if for_hash and f.metadata.get("hash") is False:
                continue
            # an option added after models or results were published: at its default it leaves
            # their ids as they were, since the default reproduces what they were made with
            if for_hash and f.metadata.get("hash") == "unless_default" and getattr(obj, f.name) == _default(f):
                continue
            out[f.name] = to_dict(getattr(obj, f.name), for_hash=for_hash)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, for_hash=for_hash) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, for_hash=for_hash) for k, v in obj.items()}
    return obj


def config_hash(cfg: Any, length: int = 8) -> str:
    """Short, process-independent id of everything in the config that changes results."""
    canon = json.dumps(to_dict(cfg, for_hash=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:length]


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists of sections become 'a[0].b'."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = d
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------------------------
# YAML + overrides


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"command-line override {text!r}: expected key=value, e.g. train.steps=200")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command-line override {text!r}: empty key")
    try:
        value = load_yaml(raw, f"command-line override {text!r}")[0] if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(d: dict, key: str, value: Any, source: str = "command-line override") -> None:
    parts = key.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p) if isinstance(cur, dict) else None
        if isinstance(nxt, str):  # shorthand section `backbone: sd3` -> {'name': 'sd3'}
            nxt = {"name": nxt}
            cur[p] = nxt
        if nxt is None:
            nxt = {}
            cur[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: key '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def load_yaml(text: str, name: str) -> tuple[Any, dict[str, str]]:
    """yaml.safe_load that refuses a key written twice in one mapping (plain YAML keeps the last
    one silently), and says on which line each dotted key was written: (data, {key: 'name:line'})."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[str, str] = {}
        _walk_yaml(node, "", name, lines)
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def _walk_yaml(node: yaml.Node, prefix: str, name: str, lines: dict[str, str]) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            dotted = f"{prefix}.{key}" if prefix else key
            if key in first:
                raise ConfigError(f"{name}:{line}: key '{dotted}': written twice (also on line {first[key]}); "
                                  f"YAML would keep only the last; allowed: each key once per mapping")
            first[key] = line
            lines[dotted] = f"{name}:{line}"
            _walk_yaml(value_node, dotted, name, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = f"{name}:{item.start_mark.line + 1}"
            _walk_yaml(item, f"{prefix}[{i}]", name, lines)


def _shown(path: Path) -> str:
    """A path as the user would write it: relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_yaml(path: str | Path, lines: dict[str, str] | None = None) -> dict:
    """A YAML mapping from a file (duplicate keys refused); `lines` receives where each key was written."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data, where = load_yaml(path.read_text(), _shown(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if lines is not None:
        lines.update(where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict, top: dict) -> dict:
    """Mappings merge key by key; anything else in `top` replaces what `base` has."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = (), lines: dict[str, str] | None = None) -> dict:
    """A config file with its `include:` list (paths relative to it) merged underneath it, in order.
    `lines` receives where each dotted key of the result was written ('file:line')."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: include cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    own: dict[str, str] = {}
    data = read_yaml(path, own)
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: key 'include': expected a list of config file paths, got {includes!r}")
    merged: dict = {}
    for inc in includes:
        inc_path = path.parent / inc
        if not inc_path.exists():
            raise ConfigError(f"{path}: key 'include': file not found: {inc_path}")
        merged = deep_merge(merged, read_config_yaml(inc_path, (*_seen, path), lines))
    if lines is not None:
        lines.update(own)
    return deep_merge(merged, data)


def resolve_dict(data: dict, overrides: list[str] | dict[str, Any] = (), label: str | None = None) -> tuple[dict, Overrides]:
    """Apply dotted overrides to a raw config dict; returns the new dict and the overridden keys."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    keys = set()
    for k, v in items:
        # a copy: a later dotted key (method.lr after method: {...}) must not write into the caller's dict
        set_dotted(data, k, copy.deepcopy(v), label or "command-line override")
        keys.add(k)
    return data, Overrides(keys, label)


def load_run_config(path: str | Path | None, overrides: list[str] | dict[str, Any] = (), data: dict | None = None,
                    label: str | None = None, source: str | None = None) -> Any:
    """Read a run config from YAML (or `data`), apply overrides, type-check everything."""
    from harness.runconfig import RunConfig

    lines: dict[str, str] = {}
    raw = read_config_yaml(path, lines=lines) if path is not None else (data or {})
    source = Source(source or (str(path) if path is not None else "<config>"), getattr(source, "lines", None) or lines)
    plugins = raw.get("plugins") or []
    raw, keys = resolve_dict(raw, overrides, label)
    plugins = raw.get("plugins") or plugins
    if plugins:
        if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
            raise ConfigError(f"{source}: key 'plugins': expected a list of module names, got {plugins!r}")
        registry.load_plugins(plugins)
    return from_dict(RunConfig, raw, source, keys)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every field: used by --help style listings."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None
        )
        rows.append((key, _type_name(hints[f.name]), to_dict(default), f.metadata.get("help", "")))
    return rows


__all__ = [
    "ConfigError",
    "FieldError",
    "Source",
    "build_section",
    "check_range",
    "config_hash",
    "dataclass",
    "dataclasses",
    "describe",
    "dump_yaml",
    "field",
    "flatten",
    "from_dict",
    "load_run_config",
    "nohash",
    "poly",
    "poly_list",
    "load_yaml",
    "read_config_yaml",
    "read_yaml",
    "resolve_dict",
    "to_dict",
]
