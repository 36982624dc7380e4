"""What a run reads, checked before it starts: no run folder is made and no job is queued until
its data and benchmark paths exist, their index files parse, and the dataset's images read.

    check_run(cfg)                      # raises ConfigError naming the path, the key, what is allowed
    check_benchmark(bcfg, "benchmark")  # one benchmark section (harness.evaluate)

The image check is the one a dataset makes when it is opened (harness.data.instructions), cached
per dataset, so the training job that opens the dataset again reads no image header twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import ConfigError
from harness.data.instructions import DatasetError, read_instructions, read_pairs, usable_records

_DATA = (("path", "instructions.jsonl", read_instructions), ("paired_path", "pairs.jsonl", read_pairs))


def check_run(cfg: Any) -> None:
    check_data(cfg)
    for i, bcfg in enumerate(cfg.eval.benchmarks):
        check_benchmark(bcfg, f"eval.benchmarks[{i}]")


def check_data(cfg: Any) -> None:
    """data.path and data.paired_path: a dataset folder with its index and readable images, or
    'toyworld' (the built-in world's, built by the harness)."""
    for key, index, read in _DATA:
        value = getattr(cfg.data, key)
        if value == "toyworld":
            continue
        folder = Path(value)
        allowed = f"allowed: a dataset folder holding {index}, or 'toyworld'"
        if not folder.is_dir():
            raise ConfigError(f"{value}: data.{key}: {'not a folder' if folder.exists() else 'not found'}; {allowed}")
        try:
            records = read(folder)
            kept, _ = usable_records(folder, records, bad_images=cfg.data.bad_images)
        except DatasetError as e:
            raise ConfigError(f"{e} (data.{key})") from None
        if not kept:
            raise ConfigError(f"{folder / index}: data.{key}: no records with readable images; {allowed}")


def check_benchmark(bcfg: Any, key: str) -> None:
    """A benchmark read from files: its path (and image_root) exist and its index loads."""
    from harness.registry import BENCHMARKS

    for field in ("path", "image_root"):
        value = getattr(bcfg, field, None)
        if isinstance(value, str) and value and not Path(value).exists():
            raise ConfigError(f"{value}: {key}.{field} ({bcfg.name}): not found; allowed: the benchmark's files "
                              f"on this machine")
    if isinstance(getattr(bcfg, "path", None), str) and bcfg.path:
        try:
            BENCHMARKS.get(bcfg.name).build(bcfg).samples()
        except (ValueError, OSError, KeyError) as e:
            raise ConfigError(f"{bcfg.path}: {key}.path ({bcfg.name}): {e}") from None
