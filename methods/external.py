"""Editors that train nothing: table rows scored by the same benchmark code as trained runs.

Two methods, each a run whose `train.steps` is 0 (same run folder, resume, output cache and result rows
as a trained run; the evaluation setting is recorded in every result's meta):

- `diffusers`: a diffusers editing pipeline loaded with `<pipeline>.from_pretrained(path)`, e.g.

      method: {name: diffusers, pipeline: FluxKontextPipeline, path: black-forest-labs/FLUX.1-Kontext-dev,
               steps: 28, guidance: 2.5, dtype: bfloat16, offload: model, batch_size: 1}

  `configs/editors/*.yaml` hold the model cards' settings. Each result records the setting as
  sampler = the pipeline class, steps, guidance (eval.steps / eval.guidance override them, as for trained
  runs; eval.sampler cannot).
- `backbone_editor`: the run's generator backbone as it is (its pretrained transformer, or weights
  loaded by the backbone, e.g. `model.backbone.weights` of `zimage` for the public NP-Edit
  reimplementation's checkpoint), sampled by the shared few-step or Euler sampler. With
  `train.init_from` (e.g. "@ours" in a sweep) it samples that run's exported generator: a trained run
  re-sampled under another setting as a row of its own, nothing retrained.

The adapter (`ADAPTERS`): how a pipeline class is called with an image and a prompt. `guidance` goes to
the argument the class uses for its main guidance scale (FLUX: `guidance_scale`, distilled or CFG; Qwen:
`true_cfg_scale`), `call:` adds any other argument (over the adapter's own, e.g. Qwen's
`negative_prompt: " "` without which true CFG is off). Pipelines whose `image` list is a batch of edits
(Kontext, Qwen-Image-Edit) edit up to `batch_size` images of one size per call; the others take a list
as several references of ONE edit (Qwen-Image-Edit-2509, FLUX.2) and are called one image at a time.
Any other pipeline class whose `__call__` takes `image` and `prompt` works with the generic adapter
(`guidance_scale`, one image per call); a class without an `image` argument is refused when the config
is read.

Determinism: edit(images, instructions, seed) gives image i its own CPU generator, seeded from (seed, i),
so an image's output does not depend on the others in its call: batched equals unbatched.
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from PIL import Image

from harness import config as C
from harness.registry import BACKBONES, METHODS, Spec
from methods.common import (Sampling, SamplingEditor, build_backbone, eval_sampling, load_init_base,
                            resolve_init_from)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Pipeline adapters


def _kontext_size(width: int, height: int) -> dict[str, Any]:
    # FluxKontextPipeline resizes its input to a preferred ~1 MP size unless told to keep the one given
    return {"width": width, "height": height, "max_area": width * height, "_auto_resize": False}


@dataclass(frozen=True)
class Adapter:
    """How one pipeline class edits an image by a prompt."""

    guidance_arg: str = "guidance_scale"  # the call argument `guidance` is passed to
    batches: bool = False  # a list of images is a batch of edits (else: references of one edit)
    call: dict[str, Any] = field(default_factory=dict)  # arguments the model cards always pass
    # call arguments of a fixed output size (width, height) when `resolution` is set
    size: Callable[[int, int], dict[str, Any]] = lambda w, h: {"width": w, "height": h}


ADAPTERS: dict[str, Adapter] = {
    "FluxKontextPipeline": Adapter("guidance_scale", batches=True, size=_kontext_size),
    "QwenImageEditPipeline": Adapter("true_cfg_scale", batches=True, call={"negative_prompt": " "}),
    "QwenImageEditPlusPipeline": Adapter("true_cfg_scale", call={"negative_prompt": " ", "guidance_scale": 1.0}),
    "Flux2KleinPipeline": Adapter("guidance_scale"),
}
GENERIC = Adapter()


def pipeline_class(name: str) -> Any:
    """The diffusers pipeline class `name`; ValueError when diffusers has none or it takes no image."""
    import diffusers

    cls = getattr(diffusers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ValueError(f"pipeline: {name!r} is not a diffusers pipeline class (diffusers {diffusers.__version__}); "
                         f"built-in adapters: {', '.join(ADAPTERS)}")
    params = inspect.signature(cls.__call__).parameters
    missing = [a for a in ("image", "prompt") if a not in params]
    if missing:
        raise ValueError(f"pipeline: {name} does not take an input image and a prompt (its __call__ has no "
                         f"{' or '.join(map(repr, missing))} argument): an editor pipeline edits an image by an "
                         f"instruction, e.g. {', '.join(ADAPTERS)}")
    return cls


# ---------------------------------------------------------------------------------------------
# `diffusers`: a pipeline as an editor


@dataclass
class DiffusersEditorConfig:
    TRAINS: ClassVar[bool] = False  # an editor row: nothing to train (train.steps must be 0)

    name: str = "diffusers"
    pipeline: str = ""  # diffusers class name, e.g. FluxKontextPipeline
    path: str = ""  # hub id or local folder for from_pretrained
    revision: str = ""  # hub revision (commit, branch or tag); '' = default branch
    steps: int = 28  # num_inference_steps
    guidance: float = 1.0  # the adapter's guidance argument (FLUX: guidance_scale; Qwen: true_cfg_scale)
    # further __call__ arguments over the adapter's own, e.g. {negative_prompt: " ", max_sequence_length: 512}
    call: dict[str, Any] = field(default_factory=dict)
    # output of about resolution^2 pixels with the input's aspect ratio (the input resized to it);
    # 0 = the pipeline's own sizing (the model cards': about 1 MP)
    resolution: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    # on an accelerator: 'model' = enable_model_cpu_offload (one component on the GPU at a time),
    # 'sequential' = enable_sequential_cpu_offload (least memory, slowest); no effect on the CPU
    offload: Literal["none", "model", "sequential"] = C.nohash("none")
    attention_slicing: bool = C.nohash(False, help="enable_attention_slicing (an error where no component has it)")
    vae_tiling: bool = C.nohash(False, help="enable_tiling on the VAE (an error where it has none)")
    batch_size: int = C.nohash(1, help="images per pipeline call (batching pipelines only)")

    def validate(self) -> None:
        if not self.pipeline or not self.path:
            raise ValueError("diffusers: 'pipeline' (a diffusers class name) and 'path' (hub id or folder) are required")
        pipeline_class(self.pipeline)
        if self.steps < 1 or self.guidance < 0 or self.resolution < 0:
            raise ValueError(f"need steps >= 1, guidance >= 0 and resolution >= 0, got {self.steps}, {self.guidance}, "
                             f"{self.resolution}")
        adapter = ADAPTERS.get(self.pipeline, GENERIC)
        if self.batch_size < 1 or (self.batch_size > 1 and not adapter.batches):
            batching = [k for k, a in ADAPTERS.items() if a.batches]
            raise ValueError(f"batch_size: {self.pipeline} is called one image at a time (a list of images is "
                             f"several references of one edit, or unknown); set batch_size: 1 (batching pipelines: "
                             f"{', '.join(batching)})")
        if "prompt" in self.call or "image" in self.call:
            raise ValueError("call: 'image' and 'prompt' come from the benchmark, not the config")

    def default_sampling(self) -> Sampling:
        return Sampling(self.pipeline, self.steps, self.guidance)


class PipelineEditor:
    """A diffusers editing pipeline behind the Editor protocol. `sampling` (sampler = the pipeline class,
    steps, guidance) is read at every call, so `harness.evaluate` can re-score under other steps."""

    def __init__(self, cfg: DiffusersEditorConfig, device: str | torch.device = "cpu", sampling: Sampling | None = None):
        self.cfg, self.device = cfg, torch.device(device)
        self.sampling = sampling or cfg.default_sampling()
        self.adapter = ADAPTERS.get(cfg.pipeline, GENERIC)
        cls = pipeline_class(cfg.pipeline)
        try:
            self.pipe = cls.from_pretrained(cfg.path, torch_dtype=DTYPES[cfg.dtype], revision=cfg.revision or None)
        except (OSError, ValueError) as e:
            raise ValueError(f"method.path: cannot load {cfg.path!r} as {cfg.pipeline}: {e}") from e
        self._memory_options()
        self.pipe.set_progress_bar_config(disable=True)
        self.accepts = set(inspect.signature(type(self.pipe).__call__).parameters)
        unknown = sorted(set(cfg.call) - self.accepts)
        if unknown and "kwargs" not in self.accepts:
            raise ValueError(f"method.call: {cfg.pipeline} takes no argument {', '.join(map(repr, unknown))}")

    def _memory_options(self) -> None:
        pipe, cfg = self.pipe, self.cfg
        if cfg.attention_slicing:
            # diffusers slices the attention of components that offer it (UNets); transformer pipelines
            # compute attention with SDPA, already memory-efficient, and would silently ignore it
            if not any(isinstance(m, torch.nn.Module) and hasattr(m, "set_attention_slice")
                       for m in pipe.components.values()):
                raise ValueError(f"method.attention_slicing: no component of {cfg.pipeline} has attention slicing "
                                 "(its attention already runs as memory-efficient SDPA); set it false")
            pipe.enable_attention_slicing()
        if cfg.vae_tiling:
            vae = getattr(pipe, "vae", None)
            if vae is None or not hasattr(vae, "enable_tiling"):
                raise ValueError(f"method.vae_tiling: the VAE of {cfg.pipeline} has no tiling; set it false")
            vae.enable_tiling()
        if self.device.type == "cpu" or cfg.offload == "none":
            pipe.to(self.device)
        elif cfg.offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.enable_sequential_cpu_offload(device=self.device)

    def _size(self, image: Image.Image) -> tuple[int, int] | None:
        """(width, height) of about resolution^2 pixels with the image's aspect ratio, in multiples of the
        pipeline's latent patch (VAE factor x 2); None without `resolution`."""
        res = self.cfg.resolution
        if not res:
            return None
        m = 2 * int(getattr(self.pipe, "vae_scale_factor", 8))
        ratio = image.width / image.height
        w, h = res * math.sqrt(ratio), res / math.sqrt(ratio)
        return max(m, round(w / m) * m), max(m, round(h / m) * m)

    def _groups(self, sizes: list[Any]) -> list[list[int]]:
        """Consecutive images of one size, at most batch_size a call (one a call for non-batching classes)."""
        groups: list[list[int]] = []
        for i, s in enumerate(sizes):
            if (self.adapter.batches and groups and len(groups[-1]) < self.cfg.batch_size
                    and sizes[groups[-1][0]] == s):
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    @torch.no_grad()
    def edit(self, images: list[Image.Image], instructions: list[str], *, seed: int = 0) -> list[Image.Image]:
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        g = torch.Generator().manual_seed(seed)
        seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for _ in images]
        images = [im.convert("RGB") for im in images]
        sizes = [self._size(im) for im in images]
        images = [im.resize(s, Image.Resampling.LANCZOS) if s and im.size != s else im for im, s in zip(images, sizes)]
        s = self.sampling
        base = {**self.adapter.call, **self.cfg.call, "num_inference_steps": s.steps, self.adapter.guidance_arg: s.guidance,
                "output_type": "pil"}
        out: list[Image.Image | None] = [None] * len(images)
        for group in self._groups([im.size for im in images]):
            kw = dict(base)
            if sizes[group[0]] is not None:
                kw.update({k: v for k, v in self.adapter.size(*sizes[group[0]]).items() if k in self.accepts})
            gens = [torch.Generator().manual_seed(seeds[i]) for i in group]
            if self.adapter.batches:
                kw.update(image=[images[i] for i in group], prompt=[instructions[i] for i in group], generator=gens)
            else:
                kw.update(image=images[group[0]], prompt=instructions[group[0]], generator=gens[0])
            result = self.pipe(**kw).images
            if len(result) != len(group):
                raise RuntimeError(f"{self.cfg.pipeline} returned {len(result)} images for {len(group)} edits")
            for i, im in zip(group, result):
                out[i] = im
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# `backbone_editor`: the backbone as it is, through the shared sampler


@dataclass
class BackboneEditorConfig:
    TRAINS: ClassVar[bool] = False

    name: str = "backbone_editor"
    sampler: Literal["few_step", "euler"] = "few_step"
    steps: int = 4
    guidance: float = 1.0  # classifier-free guidance on the instruction (euler only)

    def validate(self) -> None:
        if self.steps < 1 or self.guidance < 0:
            raise ValueError(f"need steps >= 1 and guidance >= 0, got {self.steps}, {self.guidance}")

    def default_sampling(self) -> Sampling:
        return Sampling(self.sampler, self.steps, self.guidance)


# ---------------------------------------------------------------------------------------------
# The method: nothing to train, an editor to export and evaluate


class ExternalEditor:
    """Method protocol for editors that train nothing (train.steps = 0)."""

    def __init__(self, cfg: Any, rd: Any, device: torch.device):
        self.cfg, self.rd, self.device = cfg, rd, device
        self.sampling = eval_sampling(cfg, cfg.method.default_sampling())
        self._editor: Any = None

    def train_step(self, step: int) -> dict[str, float]:
        raise RuntimeError(f"method {self.cfg.method.name} trains nothing (train.steps must be 0)")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def editor(self) -> Any:
        if self._editor is None:
            m = self.cfg.method
            if m.name == "diffusers":
                self._editor = PipelineEditor(m, self.device, self.sampling)
            else:
                self._editor = backbone_editor(build_backbone(self.cfg, self.device), self.sampling,
                                               self.cfg.train.init_from, self.rd.path)
        return self._editor

    def export(self, folder: str) -> None:
        from harness.launch import is_main_process
        from harness.runstore import atomic_write_json

        if not is_main_process():
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        m = self.cfg.method
        meta: dict[str, Any] = {"loader": "methods.external:load_editor", "method": m.name,
                                "sampling": asdict(self.sampling), "fixed_sampler": m.name == "diffusers",
                                "editor": C.to_dict(m)}
        if m.name == "backbone_editor":
            meta["backbone"] = C.to_dict(self.cfg.model.backbone)
            if self.cfg.train.init_from:  # the run whose exported generator it samples, as an absolute path
                meta["init_from"] = str(resolve_init_from(self.cfg.train.init_from, self.rd.path).resolve())
        atomic_write_json(Path(folder) / "editor.json", meta)


def load_editor(folder: str | Path, device: str = "cpu") -> Any:
    """Rebuild the editor an ExternalEditor exported to `folder` (harness.edit / harness.evaluate --run)."""
    path = Path(folder) / "editor.json"
    meta = json.loads(path.read_text())
    sampling = Sampling(**meta["sampling"])
    if meta["method"] == "diffusers":
        cfg = C.build_section(METHODS, meta["editor"], str(path), "method")
        return PipelineEditor(cfg, device, sampling)
    bcfg = C.build_section(BACKBONES, meta["backbone"], str(path), "backbone")
    bb = BACKBONES.get(bcfg.name).build(bcfg, torch.device(device))
    return backbone_editor(bb, sampling, meta.get("init_from", ""), Path(folder))


def backbone_editor(backbone: Any, sampling: Sampling, init_from: str, run_dir: Path) -> SamplingEditor:
    """The backbone's frozen denoiser (with another run's exported generator loaded into it when
    `init_from` names one: that run re-sampled, nothing retrained) behind the shared sampler."""
    if init_from:
        load_init_base(backbone, init_from, run_dir)
    return SamplingEditor(backbone, backbone.make_denoiser(trainable=False), sampling)


def resolve(section: Any, run: Any) -> Any:
    """An editor row's run is its editor and its evaluation: train.steps must be 0, and the parts it does not
    use are reset to their defaults (the critic, the data, and for `diffusers` the backbone), so one editor
    under one evaluation setting is one run id whichever base config a sweep starts from."""
    from harness.runconfig import DataConfig

    if run.train.steps != 0:
        raise ValueError(f"{section.name} trains nothing: set train.steps: 0 (got {run.train.steps})")
    if run.eval.sampler != "method" and section.name == "diffusers":
        raise ValueError(f"eval.sampler: a diffusers pipeline samples with its own scheduler; leave eval.sampler "
                         f"'method' (got {run.eval.sampler!r}); eval.steps and eval.guidance apply")
    if section.name == "backbone_editor" and run.model.backbone is None:
        raise ValueError("backbone_editor needs model.backbone (the generator to sample)")
    run.model.critic = None
    run.data = DataConfig()
    if section.name == "diffusers":
        run.model.backbone = None
        run.train.init_from = ""
    return section


def build(cfg: Any, rd: Any, device: torch.device) -> ExternalEditor:
    return ExternalEditor(cfg, rd, device)


METHODS.register("diffusers", Spec(DiffusersEditorConfig, build, resolve=resolve,
                                   help="a diffusers editing pipeline as a table row (trains nothing)"))
METHODS.register("backbone_editor", Spec(BackboneEditorConfig, build, resolve=resolve,
                                         help="the backbone as it is, through the shared sampler (trains nothing)"))

__all__ = ["ADAPTERS", "Adapter", "BackboneEditorConfig", "DiffusersEditorConfig", "ExternalEditor", "PipelineEditor",
           "load_editor", "pipeline_class"]
