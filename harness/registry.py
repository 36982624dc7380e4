"""Name -> object registries for methods, backbones, critics, benchmarks and judges.

Modules register their entries on import; `load_builtins()` imports every built-in module
so that lookups by name work from any entry point.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Any:
        """Register `obj` under `name`; without `obj`, return a decorator."""
        if obj is None:
            def deco(o: Any) -> Any:
                self.register(name, o)
                return o
            return deco
        if name in self._entries and self._entries[name] is not obj:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> Any:
        load_builtins()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        load_builtins()
        return name in self._entries

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)


METHODS = Registry("method")
BACKBONES = Registry("backbone")
CRITICS = Registry("critic")
BENCHMARKS = Registry("benchmark")
JUDGES = Registry("judge")

# Modules whose import registers built-in entries. Each is imported once, on first lookup.
BUILTIN_MODULES: list[str] = [
    "benchmarks.shapes_edit",
    "harness.models.sd3",
    "harness.models.llava",
    "benchmarks.judges.openai_api",
    "benchmarks.judges.local_vlm",
    "benchmarks.gedit",
    "benchmarks.imgedit",
    "benchmarks.dreambooth",
    "methods.np_edit",
    "harness.models.flux",
    "harness.models.llava_onevision",
    "harness.models.internvl",
    "harness.models.qwen_vl",
    "methods.sft",
    "methods.flow_grpo",
    "harness.toyworld.assets",
    "methods.external",
    "harness.models.zimage",
]
_loaded = False


def load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def load_plugins(modules: list[str]) -> None:
    """Import user modules named in a config's `plugins` list (they register their own entries)."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise RegistryError(f"plugins: cannot import {mod!r}: {e}") from e


@dataclass(frozen=True)
class Spec:
    """A configurable registry entry: its typed config class, its builder, and the defaults
    that make this name a variant (e.g. `dmd_only` = the NP-Edit config with lambda_vlm=0)."""

    config: type
    build: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    help: str = ""
    # (section, run config) -> the section as this run needs it, or ValueError: for entries that
    # depend on another part of the run or pin what they resolve to (the built-in world's models
    # take the run's world and their recipe's hash)
    resolve: Callable[[Any, Any], Any] | None = None
