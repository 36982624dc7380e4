"""Model architectures from their real configurations, without their weights.

A generator backbone (a diffusers SD3 / FLUX pipeline) or a VLM critic is described by the config
files of its folder. They are read from the local folder a config's `path` names, or, for a hub id,
from `configs/models/json/<model>.json`: the same files' values, kept in the repository so that
planning works offline (each JSON says where its values come from). From them:

- `build_module` makes a component of the same diffusers / transformers class the harness loads, on
  the current device (under `torch.device("meta")`: no memory), in the dtype `from_pretrained` gives;
- `pipeline_loading` / `vlm_processor` stand in for the hub while a backbone or critic class builds
  itself from an architecture (the planner builds on meta; tests and checks build real modules);
- `write_reduced_pipeline` / `write_reduced_vlm` write random-weight folders of the real widths with
  fewer blocks, loadable by the ordinary loaders (`from_pretrained`), for CPU checks of real shapes.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
JSON_DIR = REPO / "configs" / "models" / "json"

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}
# the transformers model class of each VLM critic registry name
VLM_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "toy_llava": "LlavaForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


class ArchError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Where an architecture comes from


@dataclass
class PipelineArch:
    """A diffusers pipeline's component configs: {subfolder: config.json contents} (transformer, vae,
    text encoders, scheduler) and the tokenizers' model_max_length."""

    source: str
    components: dict[str, dict]
    tokenizer_lengths: dict[str, int] = field(default_factory=dict)
    folder: Path | None = None  # a local folder (its tokenizers load with from_pretrained)


@dataclass
class VLMArch:
    """A transformers VLM's config.json and (for hub ids) its image processor's settings."""

    source: str
    config: dict
    processor: dict = field(default_factory=dict)
    folder: Path | None = None


def known_models() -> dict[str, Path]:
    """{hub id: JSON file} of the architectures kept in configs/models/json/."""
    out = {}
    for f in sorted(JSON_DIR.glob("*.json")):
        hub = json.loads(f.read_text()).get("hub_id")
        if hub:
            out[hub] = f
    return out


def _model_json(path: str, key: str) -> dict:
    known = known_models()
    match = {k.lower(): v for k, v in known.items()}.get(path.lower())
    if match is None:
        raise ArchError(f"{key}: {path!r} is neither a local folder nor a model kept in {JSON_DIR.relative_to(REPO)}/ "
                        f"(known: {', '.join(known) or 'none'}); point it to a local copy, or add the model's config "
                        f"files there as JSON")
    data = json.loads(match.read_text())
    data["_file"] = str(match.relative_to(REPO))
    return data


def _read(folder: Path, name: str) -> dict | None:
    f = folder / name
    return json.loads(f.read_text()) if f.exists() else None


def pipeline_arch(path: str, key: str = "backbone.path") -> PipelineArch:
    """The architecture of the diffusers pipeline at `path` (a local folder or a known hub id)."""
    if not path:
        raise ArchError(f"{key}: empty; set it to a diffusers folder or hub id")
    folder = Path(path)
    if folder.is_dir():
        index = _read(folder, "model_index.json")
        if index is not None:
            present = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]
        else:
            present = [p.name for p in folder.iterdir() if p.is_dir()]
        comps: dict[str, dict] = {}
        for name in present:
            cfg = _read(folder / name, "scheduler_config.json" if name == "scheduler" else "config.json")
            if cfg is not None:
                comps[name] = cfg
        lengths = {}
        for name in present:
            tok = _read(folder / name, "tokenizer_config.json") if name.startswith("tokenizer") else None
            if tok is not None and isinstance(tok.get("model_max_length"), int):
                lengths[name] = tok["model_max_length"]
        if "transformer" not in comps:
            raise ArchError(f"{key}: {folder} has no transformer/config.json")
        return PipelineArch(str(folder), comps, lengths, folder)
    data = _model_json(path, key)
    return PipelineArch(data["_file"], dict(data["components"]), dict(data.get("tokenizer_max_length", {})))


def vlm_arch(path: str, key: str = "critic.path") -> VLMArch:
    """The architecture of the transformers VLM at `path` (a local folder or a known hub id)."""
    if not path:
        raise ArchError(f"{key}: empty; set it to the VLM's folder or hub id")
    folder = Path(path)
    if folder.is_dir():
        cfg = _read(folder, "config.json")
        if cfg is None:
            raise ArchError(f"{key}: {folder} has no config.json")
        return VLMArch(str(folder), cfg, {}, folder)
    data = _model_json(path, key)
    return VLMArch(data["_file"], dict(data["config"]), dict(data.get("processor", {})))


# ---------------------------------------------------------------------------------------------
# Building modules


def _class(name: str) -> Any:
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        cls = getattr(lib, name, None)
        if cls is not None:
            return cls
    raise ArchError(f"unknown model class {name!r} (neither diffusers nor transformers has it)")


def class_name(config: dict) -> str:
    """The model class a config.json names (diffusers `_class_name`, transformers `architectures`)."""
    if config.get("_class_name"):
        return config["_class_name"]
    archs = config.get("architectures") or []
    if archs:
        return archs[0]
    raise ArchError(f"config names no model class: {sorted(config)[:8]}...")


def transformers_config(config: dict) -> Any:
    from transformers import AutoConfig

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ArchError("a transformers config.json needs its model_type")
    return AutoConfig.for_model(model_type, **cfg)


def build_module(config: dict, cls: Any = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialised module of `cls` (default: the class the config names), on the current
    default device, in `dtype` as `from_pretrained(..., dtype)` would load it: floating parameters and
    buffers in `dtype` (diffusers), or built under that default dtype (transformers); the modules a
    class keeps in float32 stay so in float16."""
    cls = _class(class_name(config)) if cls is None else (_class(cls) if isinstance(cls, str) else cls)
    if getattr(cls, "config_name", "") == "config.json" and hasattr(cls, "from_config"):  # diffusers
        model = cls.from_config({k: v for k, v in config.items() if k != "_class_name"})
        if dtype != torch.float32:
            model.to(dtype)
        keep = getattr(cls, "_keep_in_fp32_modules", None) or []
    else:
        model = cls._from_config(transformers_config(config), dtype=dtype)
        keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype == torch.float16 and keep:
        for name, sub in model.named_modules():
            if any(k in name.split(".") for k in keep):
                sub.float()
    return model


# ---------------------------------------------------------------------------------------------
# Standing in for the hub while a backbone class builds itself


class PaddingTokenizer:
    """Token ids of padded-to-length prompts, for planning without a model's tokenizer (the text
    encoders pad every prompt to a fixed length, so only the length matters)."""

    def __init__(self, model_max_length: int, pad_id: int = 0):
        self.model_max_length = model_max_length
        self.pad_token_id = pad_id

    def __call__(self, prompts, max_length: int | None = None, **_: Any):
        from types import SimpleNamespace

        n = len(prompts) if isinstance(prompts, (list, tuple)) else 1
        return SimpleNamespace(input_ids=torch.full((n, max_length or self.model_max_length), self.pad_token_id, dtype=torch.long))


@contextlib.contextmanager
def pipeline_loading(arch: PipelineArch, *, build=None) -> Iterator[None]:
    """While active, the SD3 and FLUX backbone classes load `arch` instead of reading their `path`:
    components are made by `build(config, cls, dtype)` (default: `build_module` on the current
    device), tokenizers come from the local folder or are `PaddingTokenizer`s of the real lengths."""
    from harness.models import flux, sd3

    build = build or build_module

    def components(path, revision, required):
        present = set(arch.components) | set(arch.tokenizer_lengths) | {TOKENIZER_OF[t] for t in arch.components if t in TOKENIZER_OF}
        for name in required:
            if name not in present:
                raise ArchError(f"backbone.path: {arch.source} has no {name}/ (found: {', '.join(sorted(present))})")
        return present

    def loader(path, revision):
        def load(cls: Any, sub: str, dtype: torch.dtype | None = None, dtype_kw: str = "dtype") -> Any:
            if sub.startswith("tokenizer"):
                if arch.folder is not None and (arch.folder / sub).is_dir():
                    return cls.from_pretrained(arch.folder, subfolder=sub)
                return PaddingTokenizer(arch.tokenizer_lengths.get(sub, 512))
            if sub not in arch.components:
                raise ArchError(f"backbone.path: {arch.source} has no {sub}/config.json")
            return build(arch.components[sub], cls, dtype or torch.float32)
        return load

    def read_json(path, name, revision):
        sub = name.split("/")[0]
        return arch.components.get(sub) if name.endswith(("scheduler_config.json", "config.json")) else None

    with contextlib.ExitStack() as stack:
        for mod in (sd3, flux):
            stack.enter_context(mock.patch.object(mod, "pipeline_components", components))
            stack.enter_context(mock.patch.object(mod, "component_loader", loader))
            stack.enter_context(mock.patch.object(mod, "read_json", read_json))
        yield


# ---------------------------------------------------------------------------------------------
# VLM processors for hub ids (a word-level tokenizer over the questions' words and the real image processor)


def vlm_processor(name: str, arch: VLMArch, vocab: list[str]) -> tuple[Any, dict]:
    """The processor of a VLM critic: its own (AutoProcessor) for a local folder; for a hub id, the
    real image processor with the settings of `arch.processor` and a word-level tokenizer over
    `vocab` with the model family's chat format (image tokens are what count; a word is about one
    BPE token). Returns (processor, config overrides that point the model's special-token ids at this
    tokenizer's: they change no weight)."""
    if arch.folder is not None:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(arch.folder), {}
    from harness.models import tiny

    ip = dict(arch.processor.get("image_processor", {}))
    ip_cls = _class(ip.pop("class"))
    settings = {k: v for k, v in arch.processor.items() if k != "image_processor"}
    image_processor = ip_cls(**ip)
    if name == "llava_onevision":
        from transformers import LlavaOnevisionProcessor
        from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

        tok = tiny._tiny_vlm_tokenizer(vocab, [tiny.IMAGE, "<video>"], 131072,
                                       {"extra_special_tokens": {"image_token": tiny.IMAGE, "video_token": "<video>"}})
        template = tiny.chatml_template(tiny.IMAGE)
        tok.chat_template = template
        proc = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(),
                                       chat_template=template, image_token=tiny.IMAGE, **settings)
        ids = {"image_token_id": tok.convert_tokens_to_ids(tiny.IMAGE), "video_token_id": tok.convert_tokens_to_ids("<video>")}
    elif name == "internvl":
        from transformers import InternVLProcessor
        from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

        special = [tiny.INTERNVL_IMG_START, tiny.INTERNVL_IMG_END, tiny.INTERNVL_IMG_CONTEXT, "<video>"]
        tok = tiny._tiny_vlm_tokenizer(vocab, special, 131072, {"extra_special_tokens": {
            "start_image_token": tiny.INTERNVL_IMG_START, "end_image_token": tiny.INTERNVL_IMG_END,
            "context_image_token": tiny.INTERNVL_IMG_CONTEXT, "video_token": "<video>"}})
        template = tiny.chatml_template(tiny.INTERNVL_IMG_CONTEXT + "\n")
        tok.chat_template = template
        proc = InternVLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                                 video_processor=InternVLVideoProcessor(), **settings)
        ids = {"image_token_id": tok.convert_tokens_to_ids(tiny.INTERNVL_IMG_CONTEXT)}
    elif name == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        special = [tiny.QWEN_VISION_START, tiny.QWEN_VISION_END, tiny.QWEN_IMAGE_PAD, tiny.QWEN_VIDEO_PAD]
        tok = tiny._tiny_vlm_tokenizer(vocab, special, 131072,
                                       {"extra_special_tokens": {"image_token": tiny.QWEN_IMAGE_PAD, "video_token": tiny.QWEN_VIDEO_PAD}})
        template = tiny.chatml_template(tiny.QWEN_VISION_START + tiny.QWEN_IMAGE_PAD + tiny.QWEN_VISION_END)
        tok.chat_template = template
        proc = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                                   video_processor=Qwen2VLVideoProcessor(size=dict(ip.get("size", {})) or None), **settings)
        ids = {"image_token_id": tok.convert_tokens_to_ids(tiny.QWEN_IMAGE_PAD),
               "video_token_id": tok.convert_tokens_to_ids(tiny.QWEN_VIDEO_PAD),
               "vision_start_token_id": tok.convert_tokens_to_ids(tiny.QWEN_VISION_START),
               "vision_end_token_id": tok.convert_tokens_to_ids(tiny.QWEN_VISION_END)}
    else:
        raise ArchError(f"critic {name!r}: no processor recipe for hub ids (local folders load their own)")
    return proc, ids


def vlm_config(name: str, arch: VLMArch, overrides: dict | None = None, token_ids: dict | None = None) -> Any:
    """The critic model's transformers config: `overrides` (dotted keys into sub-configs) applied to the
    config.json before it is read (so derived fields follow), `token_ids` set on the config after."""
    data = json.loads(json.dumps(arch.config))
    for key, value in (overrides or {}).items():
        cur = data
        *parts, last = key.split(".")
        for p in parts:
            cur = cur.setdefault(p, {})
        cur[last] = value
    if name not in VLM_CLASSES:
        raise ArchError(f"critic {name!r}: the planner knows {', '.join(sorted(VLM_CLASSES))}")
    config = transformers_config(data)
    for key, value in (token_ids or {}).items():
        setattr(config, key, value)  # attribute maps (image_token_id -> image_token_index) apply
    return config


def build_vlm(name: str, config: Any, dtype: torch.dtype) -> nn.Module:
    """The critic's transformers model from its config (on the current default device)."""
    return _class(VLM_CLASSES[name])._from_config(config, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Real-width, reduced-depth folders (CPU checks of real shapes)


def reduced_components(arch: PipelineArch, blocks: int, text_layers: int = 1) -> dict[str, dict]:
    """The pipeline's component configs with `blocks` transformer blocks (FLUX: half double-, half
    single-stream; SD3.5: the first stays a dual-attention block when the model has them) and
    `text_layers` layers per text encoder; every width, head count and length as the real model."""
    comps = json.loads(json.dumps(arch.components))
    tr = comps["transformer"]
    if class_name(tr) == "FluxTransformer2DModel":
        tr["num_layers"], tr["num_single_layers"] = max(1, blocks // 2), max(1, blocks - blocks // 2)
    else:
        tr["num_layers"] = blocks
        if tr.get("dual_attention_layers"):
            tr["dual_attention_layers"] = [i for i in tr["dual_attention_layers"] if i < blocks - 1] or [0]
    for name in TEXT_ENCODERS:
        if name in comps:
            key = "num_layers" if comps[name].get("model_type") == "t5" else "num_hidden_layers"
            comps[name][key] = text_layers
    return comps


def write_reduced_pipeline(arch: PipelineArch, folder: str | Path, *, blocks: int = 2, text_layers: int = 1,
                           vocab: list[str] = (), dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A diffusers folder of the pipeline's architecture with `blocks` transformer blocks and
    `text_layers`-layer text encoders (word-level tokenizers over `vocab`, the real lengths), random
    weights: loadable by the SD3 / FLUX backbones like the real one."""
    from harness.models.tiny import BOS, EOS, PAD, UNK, build_tokenizer, write_folder_atomically

    comps = reduced_components(arch, blocks, text_layers)
    torch.manual_seed(seed)
    index: dict[str, Any] = {"_class_name": "FluxPipeline" if class_name(comps["transformer"]) == "FluxTransformer2DModel"
                             else "StableDiffusion3Pipeline"}
    objects: dict[str, Any] = {}
    for name in TEXT_ENCODERS:
        if name not in comps:
            continue
        t5 = comps[name].get("model_type") == "t5"
        length = arch.tokenizer_lengths.get(TOKENIZER_OF[name], 512 if t5 else 77)
        tok = (build_tokenizer(vocab, special=[PAD, EOS, UNK], eos=EOS, model_max_length=length, lowercase=True) if t5 else
               build_tokenizer(vocab, special=[PAD, UNK, BOS, EOS], bos=BOS, eos=EOS, model_max_length=length, lowercase=True))
        cfg = dict(comps[name], vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if not t5:
            cfg["bos_token_id"] = tok.bos_token_id
        else:
            cfg["decoder_start_token_id"] = tok.pad_token_id
        objects[name] = ("transformers", build_module(cfg, dtype=dtype))
        objects[TOKENIZER_OF[name]] = ("transformers", tok)
    for name in ("transformer", "vae"):
        if name in comps:
            objects[name] = ("diffusers", build_module(comps[name], dtype=dtype))

    def fill(tmp: Path) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        for name, (lib, obj) in objects.items():
            obj.save_pretrained(tmp / name)
            index[name] = [lib, type(obj).__name__]
        sched = {k: v for k, v in comps.get("scheduler", {}).items() if not k.startswith("_")}
        FlowMatchEulerDiscreteScheduler(**sched).save_pretrained(tmp / "scheduler")
        index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))

    return write_folder_atomically(folder, fill)


def reduced_vlm_overrides(name: str, arch: VLMArch, layers: int, vision_layers: int) -> dict:
    """Config overrides for `layers` LM layers and `vision_layers` vision layers (Qwen2.5-VL keeps one
    full-attention block among its windowed ones)."""
    text = "text_config."
    out = {text + "num_hidden_layers": layers}
    if name == "qwen2_5_vl":
        out.update({"vision_config.depth": vision_layers, "vision_config.fullatt_block_indexes": [vision_layers - 1]})
    else:
        out["vision_config.num_hidden_layers"] = vision_layers
    if name == "qwen2_5_vl" or arch.config.get("text_config", {}).get("layer_types"):
        out[text + "layer_types"] = ["full_attention"] * layers
    return out


def write_reduced_vlm(name: str, arch: VLMArch, folder: str | Path, *, layers: int = 2, vision_layers: int = 2,
                      vocab: list[str] = (), dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A folder of the VLM with `layers` LM layers and `vision_layers` vision layers, every width, head
    count, vocabulary size and image processor setting as the real one, random weights; loadable by
    the critic's loader (`from_pretrained`)."""
    from harness.models.tiny import write_folder_atomically

    processor, ids = vlm_processor(name, arch, list(vocab))
    config = vlm_config(name, arch, reduced_vlm_overrides(name, arch, layers, vision_layers), ids)
    torch.manual_seed(seed)
    model = build_vlm(name, config, dtype).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return write_folder_atomically(folder, fill)


__all__ = ["ArchError", "JSON_DIR", "PaddingTokenizer", "PipelineArch", "VLMArch", "VLM_CLASSES", "build_module", "build_vlm",
           "class_name", "known_models", "pipeline_arch", "pipeline_loading", "reduced_components", "reduced_vlm_overrides",
           "vlm_arch", "vlm_config", "vlm_processor", "write_reduced_pipeline", "write_reduced_vlm"]
