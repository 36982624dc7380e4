"""DreamBooth: parsing the public prompts_and_classes.txt (never executing it), the editor's
instructions, the output layout, and scoring (VIEScore sdig through a loopback judge; DINO, CLIP-I
and CLIP-T on tiny random backbones saved to disk), each checked against a hand computation."""
from __future__ import annotations

import json
import math
import os

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
    VIE_TEST_CONSTANTS, FakeEditor, nearest_color, solid, tiny_open_clip, tiny_timm, write_code_with_prompts,
    write_dreambooth,
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


def test_score_equals_hand_computation(tmp_path, data):
    import open_clip
    from timm.data import create_transform, resolve_data_config

    dino_model = tiny_timm(tmp_path / "dino.safetensors")
    clip_model = tiny_open_clip(tmp_path / "clip")
    module = write_code_with_prompts(tmp_path / "viescore/vie_prompts.py", VIE_TEST_CONSTANTS, tmp_path / "executed")

    def responder(req):
        color = nearest_color(req.images[-1])
        if len(req.images) == 2:
            assert nearest_color(req.images[0]) == REAL[("backpack" if "backpack" in req.text else "dog")][0]
            s = SC[color]
        else:
            s = PQ[color]
        return reply("sorry" if s is None else '{"score": [%d, %d], "reasoning": "x"}' % s)

    outputs = {"backpack/00_0": "red", "backpack/00_1": "green", "dog/00_0": "blue"}  # dog/00_1: missing
    with ChatServer(responder) as server:
        judge = OpenAIJudgeConfig(model="gpt-4.1", base_url=server.base_url, api_key_env="", parse_retries=0)
        b = bench(data, judge=judge, prompts=str(module), limit=1, images_per_prompt=2, subjects=["backpack", "dog"],
                  metrics=["viescore", "dino", "clip_i", "clip_t"], device="cpu",
                  dino=DinoConfig(model="test_vit", weights=str(tmp_path / "dino.safetensors")),
                  clip=ClipConfig(model=f"local-dir:{tmp_path / 'clip'}"))
        for sid, color in outputs.items():
            p = tmp_path / "out/m" / f"{sid}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            solid(color, (32, 32)).save(p)
        (res,) = b.score(tmp_path / "out", model_name="m")
        assert any(r.text.endswith("TEST-SDIG-SC prompt: a backpack in the jungle\n") or
                   r.text.endswith("TEST-SDIG-SC prompt: a backpack in the jungle") for r in server.requests)
    assert not (tmp_path / "executed").exists()

    # VIEScore by hand: scored images backpack/00_0 (SC 8, PQ 8) and backpack/00_1 (SC 3, PQ 4); dog/00_0 failed.
    assert res.metrics["SC"] == pytest.approx((8 + 3) / 2)
    assert res.metrics["PQ"] == pytest.approx((8 + 4) / 2)
    assert res.metrics["Overall"] == pytest.approx((8 + math.sqrt(12)) / 2)
    assert res.counts == {"backpack": {"n": 2, "scored": 2, "failed": 0, "missing": 0},
                          "dog": {"n": 2, "scored": 0, "failed": 1, "missing": 1}}

    # DINO / CLIP by hand, with the in-memory models that were saved (so the weights were loaded, not re-drawn).
    tf = create_transform(**resolve_data_config({}, model=dino_model))
    _, _, clip_pre = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'clip'}")
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'clip'}")

    def unit(x):
        return torch.nn.functional.normalize(x.float(), dim=-1)

    def image(c):  # a colour name (the PNG outputs are exact) or a real image file (JPEG)
        return solid(c, (32, 32)) if isinstance(c, str) else Image.open(c).convert("RGB")

    real = {subject: sorted((data / subject).glob("*.jpg")) for subject in REAL}
    with torch.no_grad():
        def dino(c):
            return unit(dino_model(tf(image(c)).unsqueeze(0)))[0]

        def clip_img(c):
            return unit(clip_model.encode_image(clip_pre(image(c)).unsqueeze(0)))[0]

        def clip_txt(t):
            return unit(clip_model.encode_text(tok([t])))[0]

        expect = {}
        for sid, color in outputs.items():
            subject = sid.split("/")[0]
            prompt = "a backpack in the jungle" if subject == "backpack" else "a dog in the jungle"
            expect[sid] = {
                "DINO": sum(float(dino(color) @ dino(r)) for r in real[subject]) / len(real[subject]),
                "CLIP-I": sum(float(clip_img(color) @ clip_img(r)) for r in real[subject]) / len(real[subject]),
                "CLIP-T": float(clip_img(color) @ clip_txt(prompt)),
            }
    for m in ("DINO", "CLIP-I", "CLIP-T"):
        assert res.metrics[m] == pytest.approx(sum(e[m] for e in expect.values()) / 3, abs=1e-5)
        assert res.per_task["dog"][m] == pytest.approx(expect["dog/00_0"][m], abs=1e-5)

    assert res.meta["dino_backbone"] == {"model": "test_vit", "weights": str(tmp_path / "dino.safetensors")}
    assert res.meta["clip_backbone"]["model"] == f"local-dir:{tmp_path / 'clip'}"
    assert res.meta["prompts"] == "official" and res.meta["not_implemented"] == ["MDINO", "TIFA"]
    assert res.meta["by_category"]["object"]["SC"] == pytest.approx(5.5) and "SC" not in res.meta["by_category"]["live"]
    rows = [json.loads(l) for l in (tmp_path / "out/m/dreambooth_samples.jsonl").read_text().splitlines()]
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["id"] == "dog/00_0" and "DINO" in failed and "SC" not in failed
