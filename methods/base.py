"""The interface every training method implements (NP-Edit and its variants, SFT, Flow-GRPO)."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from PIL import Image


@runtime_checkable
class Editor(Protocol):
    """An instruction-guided image editor: what a trained method hands to benchmarks and `harness.edit`."""

    def edit(self, images: list[Image.Image], instructions: list[str], *, seed: int = 0) -> list[Image.Image]:
        """Edit each image by its instruction; outputs have the size of the editor's working resolution."""
        ...


@runtime_checkable
class Method(Protocol):
    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step (the method draws its own batch); returns scalar metrics to log."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bitwise-identically: weights, optimizers, EMA, RNG, data position."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def editor(self) -> Editor: ...

    def export(self, folder: str) -> None:
        """Write the final editing model (safetensors + what `harness.edit` needs to rebuild it)."""
        ...
