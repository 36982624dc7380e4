"""External editors as table rows: tiny random pipelines of the real diffusers classes (FluxKontextPipeline,
QwenImageEditPipeline, QwenImageEditPlusPipeline, Flux2KleinPipeline), saved and loaded back with
from_pretrained, edit deterministically per seed, batched as unbatched, through GEdit-Bench's generation
(public layout, resume after a crash) and harness.evaluate --config (a run folder, results with the setting,
a rerun that generates nothing); configs that cannot work are refused with the key named."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness import config as C
from harness.models.tiny_editors import EDITOR_PIPELINES, save_tiny_editor
from methods.external import ADAPTERS, DiffusersEditorConfig, PipelineEditor
from tests.bench_fixtures import solid, write_gedit
from tests.helpers import write_yaml

REPO = Path(__file__).resolve().parents[1]
VOCAB = ["make it red blue green the background instruction for color_alter subject-add tone_transfer"]
# An output size of about 64 x 64 keeps the tiny pipelines tiny (Kontext otherwise resizes to ~1 MP; the
# Qwen-Image pipelines still encode their condition at ~1 MP, by design: the slowest tests here)
RESOLUTION = {"FluxKontextPipeline": 64, "QwenImageEditPipeline": 64, "QwenImageEditPlusPipeline": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("editors")
    return {name: save_tiny_editor(root / name, name, vocab=VOCAB) for name in EDITOR_PIPELINES}


def editor(tiny, name, **kw):
    cfg = C.from_dict(DiffusersEditorConfig, {"pipeline": name, "path": str(tiny[name]), "steps": 2, "dtype": "float32",
                                              "resolution": RESOLUTION.get(name, 0), **kw})
    return PipelineEditor(cfg)


def arr(images):
    return [np.asarray(im) for im in images]


IMAGES = [solid("red", (64, 64)), solid("blue", (64, 64)), solid("green", (80, 64))]
INSTRUCTIONS = ["make it blue", "make it red", "make it blue"]


@pytest.mark.parametrize("name", EDITOR_PIPELINES)
def test_each_class_edits_deterministically_per_seed_and_batched_equals_unbatched(tiny, name):
    ed = editor(tiny, name)
    first = ed.edit(IMAGES, INSTRUCTIONS, seed=3)
    assert all(isinstance(im, Image.Image) for im in first) and len(first) == 3
    again = editor(tiny, name).edit(IMAGES, INSTRUCTIONS, seed=3)  # a fresh load: same pixels
    assert all(np.array_equal(a, b) for a, b in zip(arr(first), arr(again)))
    other = ed.edit(IMAGES[:1], INSTRUCTIONS[:1], seed=4)
    assert not np.array_equal(arr(first)[0], arr(other)[0])
    if ADAPTERS[name].batches:  # two same-size images in one pipeline call: the same pixels as one at a time
        batched = editor(tiny, name, batch_size=2).edit(IMAGES, INSTRUCTIONS, seed=3)
        for a, b in zip(arr(first), arr(batched)):
            np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)


@pytest.mark.parametrize("name", ["FluxKontextPipeline", "QwenImageEditPipeline"])
def test_guidance_goes_to_the_classes_own_argument(tiny, name, monkeypatch):
    """FLUX: guidance_scale (distilled guidance embedding); Qwen: true_cfg_scale with the card's negative
    prompt " " (without one the pipeline turns CFG off): changing `guidance` changes the edit."""
    ed = editor(tiny, name)
    seen = []
    call = type(ed.pipe).__call__
    monkeypatch.setattr(type(ed.pipe), "__call__", lambda self, **kw: seen.append(kw) or call(self, **kw))
    low = ed.edit(IMAGES[:1], INSTRUCTIONS[:1], seed=0)
    ed.sampling = type(ed.sampling)(ed.sampling.sampler, ed.sampling.steps, 4.0)
    high = ed.edit(IMAGES[:1], INSTRUCTIONS[:1], seed=0)
    arg = ADAPTERS[name].guidance_arg
    assert [kw[arg] for kw in seen] == [1.0, 4.0] and all(kw["num_inference_steps"] == 2 for kw in seen)
    if name.startswith("Qwen"):
        assert all(kw["negative_prompt"] == " " for kw in seen)
    assert not np.array_equal(arr(low)[0], arr(high)[0])


def test_gedit_generation_public_layout_and_resume_after_a_crash(tiny, tmp_path, monkeypatch):
    import datasets

    from benchmarks.gedit import GEditBenchmark, GEditConfig

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    b = GEditBenchmark(GEditConfig(path=str(write_gedit(tmp_path, "disk"))))
    ed = editor(tiny, "FluxKontextPipeline")
    b.generate(ed, tmp_path / "full", model_name="kontext", batch_size=2, seed=5, progress=False)
    pngs = lambda root: {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}  # noqa: E731
    full = pngs(tmp_path / "full")
    assert sorted(k for k in full if not k.endswith("_SRCIMG.png")) == sorted(
        f"kontext/fullset/{s.task}/en/{s.meta['key']}.png" for s in b.samples())

    calls = {"n": 0}
    edit = ed.edit

    def crash_after_one(images, instructions, *, seed=0):
        if calls["n"] == 1:
            raise RuntimeError("killed")
        calls["n"] += 1
        return edit(images, instructions, seed=seed)

    monkeypatch.setattr(ed, "edit", crash_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        b.generate(ed, tmp_path / "resumed", model_name="kontext", batch_size=2, seed=5, progress=False)
    done = set(pngs(tmp_path / "resumed"))
    assert 0 < len([k for k in done if not k.endswith("_SRCIMG.png")]) < len(b.samples())
    calls["n"], seen = 0, []
    monkeypatch.setattr(ed, "edit", lambda images, instructions, *, seed=0: seen.append(list(instructions)) or
                        edit(images, instructions, seed=seed))
    b.generate(ed, tmp_path / "resumed", model_name="kontext", batch_size=2, seed=5, progress=False)
    assert pngs(tmp_path / "resumed") == full  # the same files as the uninterrupted run
    assert sum(map(len, seen)) == len(b.samples()) - 2  # the finished batch was not generated again


def write_editor_config(tmp_path, tiny, name="FluxKontextPipeline", steps=2):
    """A configs/editors file pointing at the tiny pipeline, scored on a small shapes_edit."""
    return write_yaml(tmp_path / f"{name}.yaml", {
        "include": [str(REPO / "configs/editors/base.yaml")],
        "method": {"name": "diffusers", "pipeline": name, "path": str(tiny[name]), "steps": steps, "guidance": 2.5,
                   "dtype": "float32", "resolution": 64},
        "eval": {"benchmarks": [{"name": "shapes_edit", "n_per_type": 2, "edit_types": ["color"], "lpips": False}],
                 "batch_size": 2},
    })


def test_evaluate_config_scores_an_editor_as_a_run_and_a_rerun_generates_nothing(tiny, tmp_path, capsys, monkeypatch):
    from harness.evaluate import main

    cfg = write_editor_config(tmp_path, tiny)
    runs = tmp_path / "runs"
    common = ["--config", str(cfg), "--benchmark", "shapes_edit", "--runs-dir", str(runs), "--device", "cpu"]
    assert main([*common, "--dry-run"]) == 0 and not runs.exists()  # nothing written
    shown = capsys.readouterr().out
    assert "FluxKontextPipeline" in shown

    assert main(common) == 0
    (rd,) = (runs / "editors").iterdir()
    meta = json.loads((rd / "model/editor.json").read_text())
    assert meta["loader"] == "methods.external:load_editor" and meta["sampling"] == {
        "sampler": "FluxKontextPipeline", "steps": 2, "guidance": 2.5}
    saved = C.load_run_config(rd / "config.yaml")
    assert saved.method.path == str(tiny["FluxKontextPipeline"]) and saved.model.backbone is None and C.config_hash(saved) == rd.name
    (r,) = json.loads((rd / "result.json").read_text())["results"]
    assert r["benchmark"] == "shapes_edit" and r["meta"]["sampling"] == meta["sampling"]
    outputs = sorted(p for p in rd.rglob("*.png") if "eval" in p.parts)
    assert len(outputs) >= 2
    before = {p: p.read_bytes() for p in outputs}

    # a rerun finds the outputs: the pipeline is never called
    import functools

    import diffusers

    calls = []
    real = diffusers.FluxKontextPipeline.__call__

    @functools.wraps(real)  # keeps the signature the config check reads
    def counted(self, *args, **kw):
        calls.append(1)
        return real(self, *args, **kw)

    monkeypatch.setattr(diffusers.FluxKontextPipeline, "__call__", counted)
    assert main(common) == 0 and calls == []
    assert {p: p.read_bytes() for p in outputs} == before
    # the same folder re-scored at 1 step: a result of its own, generated anew
    assert main(["--run", str(rd), "--benchmark", "shapes_edit", "eval.steps=1", "--device", "cpu"]) == 0 and calls
    results = json.loads((rd / "result.json").read_text())["results"]
    assert sorted(x["meta"]["sampling"]["steps"] for x in results) == [1, 2]
    capsys.readouterr()
    assert main(["--run", str(rd), "--benchmark", "shapes_edit", "eval.sampler=euler"]) == 2
    assert "eval.sampler cannot change it" in capsys.readouterr().err


@pytest.mark.parametrize("change, expected", [
    ({"method.pipeline": "FluxPipeline"}, r"pipeline: FluxPipeline does not take an input image.*'image'"),
    ({"method.pipeline": "NoSuchPipeline"}, r"'NoSuchPipeline' is not a diffusers pipeline class"),
    ({"method.pipeline": "QwenImageEditPlusPipeline", "method.batch_size": 2}, r"batch_size: QwenImageEditPlusPipeline is called one image at a time"),
    ({"train.steps": 10}, r"diffusers trains nothing: set train.steps: 0"),
    ({"eval.sampler": "euler"}, r"eval.sampler: a diffusers pipeline samples with its own scheduler"),
    ({"method.call": {"prompt": "x"}}, r"call: 'image' and 'prompt' come from the benchmark"),
])
def test_configs_that_cannot_work_are_refused_naming_the_key(change, expected):
    with pytest.raises((C.ConfigError, ValueError), match=expected):
        C.load_run_config(REPO / "configs/editors/flux.1-kontext-dev.yaml", change)


def test_memory_options_a_pipeline_lacks_are_refused(tiny):
    with pytest.raises(ValueError, match="method.attention_slicing: no component of FluxKontextPipeline"):
        editor(tiny, "FluxKontextPipeline", attention_slicing=True)
    ed = editor(tiny, "FluxKontextPipeline", vae_tiling=True)
    assert ed.pipe.vae.use_tiling


@pytest.mark.parametrize("path", sorted((REPO / "configs/editors").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_editor_configs_load_with_their_step_counts(path):
    cfg = C.load_run_config(path)
    assert cfg.train.steps == 0
    stem = path.stem
    if stem == "base":
        return
    assert not cfg.method.TRAINS and cfg.model.critic is None
    if stem.endswith("step"):
        assert cfg.method.steps == int(stem.rsplit("-", 1)[1][:-4])


def test_editor_rows_in_a_sweep_make_the_papers_two_block_table(tiny, tmp_path):
    """A sweep of editor rows (as sweeps/editors_gedit.yaml: the same editor at its own steps and at the
    few-step setting) runs without training and its report has one block per setting, each row the
    editor's own result and its step count."""
    import io

    from harness import sweep as S

    base = write_editor_config(tmp_path, tiny)
    table = {"name": "editors", "rows": "name", "info": {"eval.steps": "#Step"}, "precision": 3,
             "row_labels": {"kontext": "FLUX.1-Kontext (tiny)"},
             "row_groups": [{"where": {"eval.steps": 2}, "rank": False}, {"where": {"eval.steps": 1}}],
             "columns": [{"benchmark": "shapes_edit", "metrics": ["PSNR"]}]}
    path = write_yaml(tmp_path / "editors.yaml", {
        "name": "editors", "base": base.name,
        "runs": [{"name": "kontext"}, {"name": "kontext", "method.steps": 1}],
        "launcher": {"cpus_per_task": 1, "timeout_min": 10}, "report": {"tables": [table]}})
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    assert [p.config.method.steps for p in planned] == [2, 1] and len({p.run_id for p in planned}) == 2
    S.launch(sw, planned, cluster="debug", out=io.StringIO(), progress=False)
    assert all(S.run_state(p.dir) == "done" for p in planned)
    for p in planned:
        assert not list(p.dir.path.glob("checkpoints/*/*.safetensors"))  # nothing trained, nothing saved
    psnr = [json.loads((p.dir.path / "result.json").read_text())["results"][0]["metrics"]["PSNR"] for p in planned]
    (tex,) = [p for p in S.build_report(sw, out=io.StringIO()) if p.name == "editors.tex"]
    rows = [line.strip() for line in tex.read_text().splitlines() if line.startswith("FLUX.1-Kontext")]
    assert [r.split(" & ")[1] for r in rows] == ["2", "1"]  # the #Step column, one block each
    assert [float(r.split(" & ")[2].strip(" \\").replace(r"\textbf{", "").rstrip("}")) for r in rows] == \
        pytest.approx(psnr, abs=5e-4)
