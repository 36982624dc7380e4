"""On-disk cache of judge replies, so a rerun or a crash never pays for a call twice.

One JSON file per request under `root/<2 hex>/<key>.json`, written atomically. The key is a hash of
the judge's identity (backend, model, decoding parameters, image encoding), the prompt text and the
content hashes of the images, so a change to any of them is a different request. Entries hold the
raw reply (parsed again on every read, so a parser fix needs no new calls) or the error of a
request that failed; failed entries are retried only when asked (`retry_failed`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.common import atomic_write_text


def image_digest(image: Image.Image) -> str:
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def request_key(identity: dict[str, Any], prompt: str, image_digests: list[str], system: str = "") -> str:
    """`system`: the request's system message, keyed only when there is one (so judge keys stay as they were)."""
    obj: dict[str, Any] = {"judge": identity, "prompt": prompt, "images": image_digests}
    if system:
        obj["system"] = system
    canon = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class JudgeCache:
    """`root=None` keeps nothing (every request is a call)."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged entry (cannot happen with atomic writes, but never trust it)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        if self.root is not None:
            atomic_write_text(self._path(key), json.dumps(entry, ensure_ascii=False, indent=1))
