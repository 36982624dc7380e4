"""DreamBooth: parsing the public prompts_and_classes.txt (never executing it), the editor's
instructions, the output layout, and scoring (VIEScore sdig through a loopback judge; DINO, CLIP-I
and CLIP-T on tiny random backbones saved to disk), each checked against a hand computation."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import BenchmarkDataError
from benchmarks.dreambooth import DreamBoothBenchmark, DreamBoothConfig, load_dreambooth
from benchmarks.judges.openai_api import OpenAIJudgeConfig
from benchmarks.metrics.clip import ClipConfig
from benchmarks.metrics.dino import DinoConfig
from harness.config import ConfigError, build_section
from harness.registry import BENCHMARKS
from tests.bench_fixtures import (
    OPEN_CLIP_TINY, VIE_TEST_CONSTANTS, FakeEditor, nearest_color, solid, tiny_open_clip, tiny_timm,
    write_code_with_prompts, write_dreambooth,
)
from tests.judge_server import ChatServer, reply

CLASSES = {"backpack": "backpack", "dog": "dog", "red_cartoon": "cartoon"}
OBJECT_PROMPTS = ["a {0} {1} in the jungle", "a {0} {1} on the beach", "a red {0} {1}"]
LIVE_PROMPTS = ["a {0} {1} in the jungle", "a {0} {1} wearing a santa hat", "a cube shaped {0} {1}"]
REAL = {"backpack": ["red", "orange"], "dog": ["yellow", "white", "black"], "red_cartoon": ["magenta"]}


@pytest.fixture
def data(tmp_path):
    return write_dreambooth(tmp_path / "dataset", CLASSES, OBJECT_PROMPTS, LIVE_PROMPTS, REAL)


def bench(data, **kw) -> DreamBoothBenchmark:
    kw.setdefault("judge", None)
    kw.setdefault("metrics", ["dino"])
    return DreamBoothBenchmark(DreamBoothConfig(path=str(data), **kw))


def test_parse_the_public_prompt_file(data):
    d = load_dreambooth(data)
    assert d.classes == CLASSES and d.object_prompts == OBJECT_PROMPTS and d.live_prompts == LIVE_PROMPTS
    assert [p.name for p in d.images["dog"]] == ["00.jpg", "01.jpg", "02.jpg"]


def test_instructions_use_the_customization_template(data):
    samples = bench(data).samples()
    assert len(samples) == 3 * 3 * 4
    dog = [s for s in samples if s.task == "dog"]
    assert dog[4].id == "dog/01_0" and dog[4].meta["live"] is True
    assert dog[4].instruction == ("Generate the main object shown in the first image in a different setting and pose: "
                                  "a dog wearing a santa hat")
    assert dog[4].meta["prompt"] == "a dog wearing a santa hat"
    backpack = [s for s in samples if s.task == "backpack"]
    assert backpack[8].meta["prompt"] == "a red backpack" and backpack[8].meta["live"] is False
    custom = bench(data, unique_token="sks", instruction_template="Show it: {prompt}.", limit=1,
                   images_per_prompt=2, subjects=["red_cartoon"]).samples()
    assert [(s.id, s.instruction, s.meta["prompt"]) for s in custom] == [
        ("red_cartoon/00_0", "Show it: a sks cartoon in the jungle.", "a cartoon in the jungle"),
        ("red_cartoon/00_1", "Show it: a sks cartoon in the jungle.", "a cartoon in the jungle"),
    ]


def test_bad_data_and_config_errors(tmp_path, data):
    with pytest.raises(BenchmarkDataError, match="prompts_and_classes.txt: file not found"):
        load_dreambooth(tmp_path)
    with pytest.raises(BenchmarkDataError, match=r"dreambooth.subjects: unknown \['cat9'\]"):
        bench(data, subjects=["cat9"]).samples()
    text = (data / "prompts_and_classes.txt").read_text()
    (data / "prompts_and_classes.txt").write_text(text.replace("'a red {0} {1}'", "'a {0.__class__} {1}'"))
    with pytest.raises(BenchmarkDataError, match=r"may use only \{0\} \(token\) and \{1\} \(class\)"):
        load_dreambooth(data)
    (data / "prompts_and_classes.txt").write_text(text.replace("subject_name,class\n", "subject_name,class\nghost,toy\n"))
    with pytest.raises(BenchmarkDataError, match="ghost: expected the images of subject 'ghost'"):
        load_dreambooth(data)
    with pytest.raises(ConfigError, match="instruction_template must contain"):
        build_section(BENCHMARKS, {"name": "dreambooth", "path": "x", "instruction_template": "no field"}, "<t>", "b")
    with pytest.raises(ConfigError, match="'viescore' but judge is null"):
        build_section(BENCHMARKS, {"name": "dreambooth", "path": "x", "judge": None}, "<t>", "b")


def test_generate_four_images_per_prompt_from_the_reference(tmp_path, data):
    b = bench(data, reference_image=1, subjects=["backpack"])
    editor = FakeEditor()
    b.generate(editor, tmp_path / "out", model_name="m", batch_size=4)
    names = sorted(p.relative_to(tmp_path / "out/m").as_posix() for p in (tmp_path / "out/m").rglob("*.png"))
    assert names == [f"backpack/{p:02d}_{k}.png" for p in range(3) for k in range(4)]
    assert editor.calls == 3 and all(len(set(ins)) == 1 for _, ins, _ in editor.seen)  # one prompt per batch
    assert editor.input_colors == ["orange"] * 12  # the subject's second image (reference_image=1)
    with Image.open(tmp_path / "out/m/backpack/00_0.png") as a, Image.open(tmp_path / "out/m/backpack/00_1.png") as b_:
        assert a.tobytes() != b_.tobytes()  # four draws of one prompt differ


SC = {"red": (9, 8), "green": (3, 6), "blue": (7, 7)}  # by the generated image's colour
PQ = {"red": (8, 8), "green": (5, 4), "blue": None}  # blue: never parsable


def test_viescore_sdig_through_the_loopback_judge_equals_hand_computation(tmp_path, data):
    module = write_code_with_prompts(tmp_path / "viescore/vie_prompts.py", VIE_TEST_CONSTANTS, tmp_path / "executed")

    def responder(req):
        color = nearest_color(req.images[-1])
        if len(req.images) == 2:  # SC: [the subject's reference image, the generated one]
            assert nearest_color(req.images[0]) == REAL[("backpack" if "backpack" in req.text else "dog")][0]
            s = SC[color]
        else:
            s = PQ[color]
        return reply("sorry" if s is None else '{"score": [%d, %d], "reasoning": "x"}' % s)

    outputs = {"backpack/00_0": "red", "backpack/00_1": "green", "dog/00_0": "blue"}  # dog/00_1: missing
    with ChatServer(responder) as server:
        judge = OpenAIJudgeConfig(model="gpt-4.1", base_url=server.base_url, api_key_env="", parse_retries=0)
        b = bench(data, judge=judge, prompts=str(module), limit=1, images_per_prompt=2, subjects=["backpack", "dog"],
                  metrics=["viescore"])
        for sid, color in outputs.items():
            p = tmp_path / "out/m" / f"{sid}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            solid(color, (32, 32)).save(p)
        (res,) = b.score(tmp_path / "out", model_name="m")
        assert any(r.text.endswith("TEST-SDIG-SC prompt: a backpack in the jungle\n") or
                   r.text.endswith("TEST-SDIG-SC prompt: a backpack in the jungle") for r in server.requests)
        assert len(server.judged) == 3 * 2 and server.preflights == 1
        again = bench(data, judge=judge, prompts=str(module), limit=1, images_per_prompt=2, subjects=["backpack", "dog"],
                      metrics=["viescore"]).score(tmp_path / "out", model_name="m")
        assert len(server.requests) == 7 and again[0].meta["judge_calls"] == 0  # a cached rerun makes no call
    assert not (tmp_path / "executed").exists()

    # By hand: scored images backpack/00_0 (SC min(9, 8) = 8, PQ min(8, 8) = 8) and backpack/00_1
    # (SC min(3, 6) = 3, PQ min(5, 4) = 4); dog/00_0's PQ reply never parses: failed; dog/00_1 missing.
    assert res.metrics["SC"] == pytest.approx((8 + 3) / 2)
    assert res.metrics["PQ"] == pytest.approx((8 + 4) / 2)
    assert res.metrics["Overall"] == pytest.approx((math.sqrt(8 * 8) + math.sqrt(3 * 4)) / 2)
    assert res.counts == {"backpack": {"n": 2, "scored": 2, "failed": 0, "missing": 0},
                          "dog": {"n": 2, "scored": 0, "failed": 1, "missing": 1}}
    assert res.meta["prompts"] == "official" and res.meta["not_implemented"] == ["MDINO", "TIFA"]
    assert res.meta["by_category"]["object"]["SC"] == pytest.approx(5.5) and "SC" not in res.meta["by_category"]["live"]
    assert res.meta["missing_outputs"] == ["dog/00_1.png"] and res.meta["judge_passes"] == 1
    rows = [json.loads(l) for l in (tmp_path / "out/m/dreambooth_samples.jsonl").read_text().splitlines()]
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["id"] == "dog/00_0" and "SC" not in failed and "unparsable" in failed["error"]


def halves(left: str, right: str, size: tuple[int, int]) -> Image.Image:
    """Two colours side by side: resizing and center-cropping change what a model sees."""
    im = solid(left, size)
    im.paste(solid(right, (size[0] // 3, size[1])), (size[0] - size[0] // 3, 0))
    return im


def test_dino_clip_i_clip_t_equal_hand_computation(tmp_path):
    """DINO, CLIP-I, CLIP-T on tiny random models of the real classes (timm VisionTransformer, open_clip CLIP),
    saved and loaded back; the expected numbers from the models' own preprocessing written out by hand
    (resize the shorter side, center crop, normalise with the model's mean/std), the DINO feature as the CLS
    token, cosine as a.b / (|a||b|), and the paper's averaging: each generated image against every real
    image of its subject, then the mean over generated images."""
    import open_clip

    dino_model = tiny_timm(tmp_path / "dino.safetensors")
    clip_model = tiny_open_clip(tmp_path / "clip")
    real = {"backpack": [("red", "blue", (40, 32)), ("green", "yellow", (36, 48))],
            "dog": [("white", "black", (32, 32)), ("orange", "cyan", (50, 30)), ("magenta", "gray", (30, 44))]}
    root = tmp_path / "dataset"
    write_dreambooth(root, {"backpack": "backpack", "dog": "dog"}, OBJECT_PROMPTS, LIVE_PROMPTS,
                     {s: ["red"] * len(v) for s, v in real.items()})
    for subject, imgs in real.items():  # replace the solid images by structured, non-square ones
        for i, (a, b_, size) in enumerate(imgs):
            halves(a, b_, size).save(root / subject / f"{i:02d}.jpg", quality=95)
    outputs = {"backpack/00_0": ("blue", "red", (48, 32)), "backpack/00_1": ("yellow", "green", (30, 45)),
               "dog/00_0": ("black", "white", (64, 40))}  # dog/00_1: missing
    for sid, (a, b_, size) in outputs.items():
        p = tmp_path / "out/m" / f"{sid}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        halves(a, b_, size).save(p)
    b = DreamBoothBenchmark(DreamBoothConfig(
        path=str(root), judge=None, metrics=["dino", "clip_i", "clip_t"], limit=1, images_per_prompt=2, device="cpu",
        dino=DinoConfig(model="test_vit", weights=str(tmp_path / "dino.safetensors")),
        clip=ClipConfig(model=f"local-dir:{tmp_path / 'clip'}")))
    (res,) = b.score(tmp_path / "out", model_name="m")

    def preprocess(im: Image.Image, size: int, crop_pct: float, mean, std) -> torch.Tensor:
        w, h = im.size
        short = math.floor(size / crop_pct)  # the resize target of the shorter side
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        im = im.resize(new, Image.Resampling.BICUBIC)
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255
        return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).unsqueeze(0)

    def cos(a: torch.Tensor, b_: torch.Tensor) -> float:
        return float(a @ b_ / (a.norm() * b_.norm()))

    dcfg = dino_model.pretrained_cfg  # the DINO model's own preprocessing
    ccfg = OPEN_CLIP_TINY["preprocess_cfg"]
    csize = OPEN_CLIP_TINY["model_cfg"]["vision_cfg"]["image_size"]
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'clip'}")
    with torch.no_grad():
        def dino(im):
            return dino_model.forward_features(preprocess(im, dcfg["input_size"][1], dcfg["crop_pct"], dcfg["mean"], dcfg["std"]))[0, 0]

        def clip_img(im):
            return clip_model.encode_image(preprocess(im, csize, 1.0, ccfg["mean"], ccfg["std"]))[0]

        def clip_txt(text):
            return clip_model.encode_text(tok([text]))[0]

        expect = {}
        for sid in outputs:
            subject = sid.split("/")[0]
            gen = Image.open(tmp_path / "out/m" / f"{sid}.png").convert("RGB")
            reals = [Image.open(f).convert("RGB") for f in sorted((root / subject).glob("*.jpg"))]
            expect[sid] = {
                "DINO": sum(cos(dino(gen), dino(r)) for r in reals) / len(reals),
                "CLIP-I": sum(cos(clip_img(gen), clip_img(r)) for r in reals) / len(reals),
                "CLIP-T": cos(clip_img(gen), clip_txt(f"a {subject} in the jungle")),  # the class noun, no token
            }
    for m in ("DINO", "CLIP-I", "CLIP-T"):
        assert res.metrics[m] == pytest.approx(sum(e[m] for e in expect.values()) / 3, abs=1e-5), m
        assert res.per_task["dog"][m] == pytest.approx(expect["dog/00_0"][m], abs=1e-5), m
        assert res.per_task["backpack"][m] == pytest.approx((expect["backpack/00_0"][m] + expect["backpack/00_1"][m]) / 2, abs=1e-5)
    assert len({round(e["DINO"], 4) for e in expect.values()}) == 3  # the images differ to the models
    assert res.meta["dino_backbone"] == {"model": "test_vit", "weights": str(tmp_path / "dino.safetensors")}
    assert res.meta["clip_backbone"]["model"] == f"local-dir:{tmp_path / 'clip'}"
    assert res.counts["dog"] == {"n": 2, "scored": 1, "failed": 0, "missing": 1}
