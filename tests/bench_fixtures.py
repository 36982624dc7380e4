"""Fixtures for the public-benchmark tests, written from code into tmp folders in exactly the public
formats (GEdit-Bench as a saved HF dataset and as parquet; ImgEdit Basic/UGE json + images;
DreamBooth's dataset/ folder), plus a deterministic fake editor and tiny random judge/metric models
saved to disk and loaded back through the normal paths."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image

PALETTE = {
    "red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
    "cyan": (30, 210, 220), "magenta": (210, 30, 200), "white": (245, 245, 245), "black": (10, 10, 10),
    "orange": (240, 140, 20), "gray": (128, 128, 128),
}


def solid(color: str | tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, PALETTE[color] if isinstance(color, str) else color)


def nearest_color(image: Image.Image) -> str:
    """The palette colour closest to the image's mean colour (robust to JPEG re-encoding)."""
    px = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    return min(PALETTE, key=lambda k: sum((a - b) ** 2 for a, b in zip(PALETTE[k], px)))


# ---------------------------------------------------------------------------------------------
# Editors


class FakeEditor:
    """Deterministic in (input, instruction, seed, position in batch), like a batched sampler:
    fills the output with a colour hashed from them. Counts its calls; can fail after `fail_after` calls."""

    def __init__(self, size: tuple[int, int] = (24, 24), fail_after: int | None = None):
        self.size = size
        self.calls = 0
        self.fail_after = fail_after
        self.seen: list[tuple[list[tuple[int, int]], list[str], int]] = []  # (input sizes, instructions, seed)
        self.input_colors: list[str] = []  # nearest palette colour of every input, in order

    def edit(self, images: list[Image.Image], instructions: list[str], *, seed: int = 0) -> list[Image.Image]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        means = [im.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)) for im in images]
        self.seen.append(([im.size for im in images], list(instructions), seed))
        self.input_colors += [nearest_color(im) for im in images]
        out = []
        for pos, (m, ins) in enumerate(zip(means, instructions)):
            h = hashlib.sha256(f"{m}|{ins}|{seed}|{pos}".encode()).digest()
            out.append(Image.new("RGB", self.size, (h[0], h[1], h[2])))
        return out


# ---------------------------------------------------------------------------------------------
# GEdit-Bench


def gedit_rows() -> list[dict[str, Any]]:
    """Three task types, English and Chinese rows, Intersection_exist mixed; each English row has its own colour."""
    spec = [  # task, key, colour, intersection, language
        ("color_alter", "a" * 32, "red", True, "en"),
        ("color_alter", "b" * 32, "green", False, "en"),
        ("color_alter", "c" * 32, "blue", True, "cn"),
        ("subject-add", "d" * 32, "yellow", True, "en"),
        ("subject-add", "e" * 32, "cyan", True, "en"),
        ("subject-add", "f" * 32, "magenta", False, "en"),
        ("tone_transfer", "0" * 32, "white", False, "en"),
        ("tone_transfer", "1" * 32, "black", True, "en"),
    ]
    return [{"task_type": t, "key": k, "instruction": f"instruction for {t} {k[:4]}" if lang == "en" else f"指令 {k[:4]}",
             "instruction_language": lang, "color": c, "Intersection_exist": inter} for t, k, c, inter, lang in spec]


def write_gedit(root: Path, fmt: str = "disk", rows: list[dict[str, Any]] | None = None) -> Path:
    """GEdit-Bench with its public columns, as a save_to_disk folder ('disk') or parquet files ('parquet')."""
    import datasets

    rows = rows or gedit_rows()
    features = datasets.Features({
        "task_type": datasets.Value("string"), "key": datasets.Value("string"),
        "instruction": datasets.Value("string"), "instruction_language": datasets.Value("string"),
        "input_image": datasets.Image(), "input_image_raw": datasets.Image(), "Intersection_exist": datasets.Value("bool"),
    })
    data = {k: [r[k] for r in rows] for k in ("task_type", "key", "instruction", "instruction_language", "Intersection_exist")}
    data["input_image"] = [solid(r["color"], (40, 30)) for r in rows]
    data["input_image_raw"] = [solid(r["color"], (80, 60)) for r in rows]
    ds = datasets.Dataset.from_dict(data, features=features)
    if fmt == "disk":
        out = root / "gedit_disk"
        ds.save_to_disk(str(out))
    else:
        out = root / "gedit_parquet" / "data"
        out.mkdir(parents=True)
        half = len(rows) // 2
        ds.select(range(half)).to_parquet(str(out / "train-00000-of-00002.parquet"))
        ds.select(range(half, len(rows))).to_parquet(str(out / "train-00001-of-00002.parquet"))
        out = out.parent
    return out


# ---------------------------------------------------------------------------------------------
# ImgEdit


def write_imgedit_basic(root: Path, items: dict[str, dict[str, str]], colors: dict[str, str]) -> Path:
    """basic_edit.json + its images at <root>/<folder>/<file>.jpg; returns the json path."""
    root.mkdir(parents=True, exist_ok=True)
    for key, item in items.items():
        p = root / item["id"]
        p.parent.mkdir(parents=True, exist_ok=True)
        solid(colors[key], (36, 28)).save(p, quality=95)
    (root / "basic_edit.json").write_text(json.dumps(items, indent=4))
    return root / "basic_edit.json"


def write_imgedit_prompts(path: Path, types: list[str]) -> Path:
    """A prompts.json in ImgEdit's format, with this test's own text."""
    prompts = {t: f"TEST-PROMPT type={t}. Instruction: <edit_prompt>. Rate A, B, C from 1 to 5." for t in types}
    path.write_text(json.dumps(prompts, indent=2))
    return path


def write_uge(root: Path, items: dict[str, dict[str, str]], colors: dict[str, str]) -> Path:
    """UGE_edit.json + images flat under <root>/images; returns the json path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for key, item in items.items():
        solid(colors[key], (30, 30)).save(root / "images" / item["id"], quality=95)
    (root / "UGE_edit.json").write_text(json.dumps(items, indent=4))
    return root / "UGE_edit.json"


def write_code_with_prompts(path: Path, constants: dict[str, str], marker: Path) -> Path:
    """A Python module defining string constants, and code that would leave `marker` if it were ever run."""
    lines = ["import pathlib", f"pathlib.Path({str(marker)!r}).write_text('executed')"]
    lines += [f"{name} = {text!r}" for name, text in constants.items()]
    lines += ["def helper():", "    return 1", "raise SystemExit('this module must never be executed')"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


VIE_TEST_CONSTANTS = {
    "_context_no_delimit": "TEST-CONTEXT answer as JSON",
    "_prompts_0shot_two_image_edit_rule": "TEST-TIE-RULE two images",
    "_prompts_0shot_tie_rule_SC": "TEST-TIE-SC instruction: <instruction>",
    "_prompts_0shot_rule_PQ": "TEST-PQ one image",
    "_prompts_0shot_subject_image_gen_rule": "TEST-SDIG-RULE subject then generated",
    "_prompts_0shot_sdig_rule_SC": "TEST-SDIG-SC prompt: <prompt>",
}


# ---------------------------------------------------------------------------------------------
# DreamBooth


def write_dreambooth(root: Path, classes: dict[str, str], object_prompts: list[str], live_prompts: list[str],
                     colors: dict[str, list[str]]) -> Path:
    """DreamBooth's dataset/ folder: <subject>/NN.jpg and prompts_and_classes.txt in the public layout."""
    root.mkdir(parents=True, exist_ok=True)
    for subject, cols in colors.items():
        (root / subject).mkdir(exist_ok=True)
        for i, c in enumerate(cols):
            solid(c, (32, 32)).save(root / subject / f"{i:02d}.jpg", quality=95)

    def block(prompts: list[str]) -> str:
        body = ",\n".join(f"'{p}'.format(unique_token, class_token)" for p in prompts)
        return f"prompt_list = [\n{body}\n]\n"

    text = "Classes\n\nsubject_name,class\n" + "".join(f"{s},{c}\n" for s, c in classes.items())
    text += "\nPrompts\n\nObject Prompts\n\n" + block(object_prompts) + "\nLive Subject Prompts\n\n" + block(live_prompts)
    (root / "prompts_and_classes.txt").write_text(text)
    return root


# ---------------------------------------------------------------------------------------------
# Tiny models saved to disk


def tiny_llava(path: Path) -> Path:
    """A tiny random LLaVA (CLIP vision + Llama text) with a WordLevel tokenizer and a chat template,
    saved with save_pretrained: loadable by AutoModelForImageTextToText / AutoProcessor."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    words = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", "score", "{", "}", "[", "]", ":", ",", "1", "7"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    chat = ("{% for m in messages %}{{ 'USER:' if m['role'] == 'user' else 'ASSISTANT:' }} {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                               tokenizer=fast, patch_size=8, vision_feature_select_strategy="default", chat_template=chat,
                               num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return path


def tiny_timm(path: Path):
    """A random timm test ViT, its weights saved as safetensors at `path`; returns the in-memory model."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


OPEN_CLIP_TINY = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}


def tiny_open_clip(folder: Path):
    """A random tiny open_clip model in the 'local-dir:' layout (open_clip_config.json + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_TINY))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return model
