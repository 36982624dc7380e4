"""The shapes_edit benchmark: its exact scorer, its aggregation, generation with resume, LPIPS."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import shapes_edit
from benchmarks.base import Benchmark
from benchmarks.metrics import lpips as lpips_metric
from benchmarks.shapes_edit import PQ_TAU, PQ_TOLERANCE, ShapesEdit, ShapesEditConfig, score_pair
from harness.registry import BENCHMARKS
from harness.toyworld.edits import EDIT_TYPES, Edit, sample_edit, supported_edit_types
from harness.toyworld.render import render, to_pil
from harness.toyworld.scenes import PALETTE, Obj, Scene, full_world, split_of

CFG = full_world()  # the hand-made scenes below use its 3x3 grid, diamonds and purple


@pytest.fixture(scope="module")
def edits() -> list[Edit]:
    return [sample_edit(np.random.default_rng([21, k, i]), CFG, t)
            for k, t in enumerate(EDIT_TYPES) for i in range(8)]


def noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_rendered_targets_score_full_marks(edits):
    for e in edits:
        s = score_pair(render(e.target, CFG), e, CFG)
        assert s["O"] >= 9.5 and s["SC"] == 10.0 and s["PQ"] == 10.0, (e.instruction, s)


def test_unedited_input_fails_every_edit_type(edits):
    for e in edits:
        s = score_pair(render(e.source, CFG), e, CFG)
        assert s["edit_success"] == 0.0 and s["SC"] == 0.0 and s["preservation"] == 10.0, (e.instruction, s)


def test_pure_noise_scores_about_zero(edits):
    o = [score_pair(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8), e, CFG)["O"]
         for i, e in enumerate(edits)]
    assert np.mean(o) < 0.3 and max(o) < 2.0


def test_pq_falls_smoothly_with_noise(edits):
    pq = [np.mean([score_pair(noisy(render(e.target, CFG), sigma, i), e, CFG)["PQ"] for i, e in enumerate(edits)])
          for sigma in (0, 4, 8, 16, 32)]
    assert pq[0] == 10.0 and pq[-1] < 3.0
    assert all(a > b for a, b in zip(pq, pq[1:])), pq
    assert all(a - b < 5.0 for a, b in zip(pq, pq[1:])), pq  # no cliff between neighbouring levels


def test_scores_equal_hand_computed_values():
    red = Obj("circle", "red", "small", 0, "solid", 0)
    blue = Obj("square", "blue", "large", 8, "striped", 1)
    source = Scene("white", "filled", (red, blue))
    target = source.with_object(Obj("circle", "green", "small", 0, "solid", 0))
    edit = Edit("color", "make the red circle green", "red circle", source, target)
    # Edit applied, but the untouched blue square also shrank: 1 of 11 preserved facts is wrong
    # (background, style, 4 facts of the circle, 5 of the square).
    output = target.with_object(Obj("square", "blue", "small", 8, "striped", 1))
    s = score_pair(render(output, CFG), edit, CFG)
    assert s["edit_success"] == 10.0
    assert s["preservation"] == pytest.approx(100 / 11)
    assert s["SC"] == pytest.approx(100 / 11) and s["PQ"] == 10.0
    assert s["O"] == pytest.approx(math.sqrt(1000 / 11))

    # Add: the new object has the wrong colour: 4 of its 5 facts right; everything else preserved.
    one = Scene("white", "filled", (red,))
    added = one.with_object(Obj("triangle", "yellow", "small", 4, "striped", 1))
    edit = Edit("add", "add a small striped yellow triangle in the center", "yellow triangle", one, added)
    wrong = one.with_object(Obj("triangle", "orange", "small", 4, "striped", 1))
    s = score_pair(render(wrong, CFG), edit, CFG)
    assert (s["edit_success"], s["preservation"], s["SC"]) == (8.0, 10.0, 8.0)
    # An extra object counts as one more failed preserved fact: 7 / (7 + 1).
    extra = added.with_object(Obj("square", "purple", "large", 2, "solid", 2))
    s = score_pair(render(extra, CFG), edit, CFG)
    assert (s["edit_success"], s["preservation"]) == (10.0, pytest.approx(70 / 8))

    # PQ: 32 background pixels off by 51/255 (still parsed as white): each costs 0.2 - tolerance.
    img = render(added, CFG)
    img[-1, :] = 204
    expected_pq = 10 * math.exp(-(32 * (0.2 - PQ_TOLERANCE) / 1024) / PQ_TAU)
    s = score_pair(img, edit, CFG)
    assert s["SC"] == 10.0 and s["PQ"] == pytest.approx(expected_pq, rel=1e-5)
    assert s["PSNR"] == pytest.approx(10 * math.log10(1 / (32 * 0.2**2 / 1024)), rel=1e-6)


def test_removal_and_style_facts():
    red = Obj("circle", "red", "small", 0, "striped", 0)
    blue = Obj("square", "blue", "large", 8, "solid", 1)
    source = Scene("gray", "filled", (red, blue))
    removed = Edit("remove", "remove the red circle", "red circle", source, source.without(0))
    assert score_pair(render(source.without(0), CFG), removed, CFG)["SC"] == 10.0
    # Removing both objects removes the one asked for but loses the 5 facts of the other: 2 / 7 preserved.
    s = score_pair(np.full((32, 32, 3), 128, np.uint8), removed, CFG)
    assert (s["edit_success"], s["preservation"]) == (10.0, pytest.approx(20 / 7))
    # Style: outline drawings have no pattern, so a filled output with the right shapes is a failed edit.
    outline = Scene("gray", "outline", (Obj("circle", "red", "small", 0, "solid", 0), Obj(*blue.attrs(), id=1)))
    styled = Edit("style", "make it a line drawing", "", source, outline)
    assert score_pair(render(outline, CFG), styled, CFG)["SC"] == 10.0
    solid = Scene("gray", "filled", (Obj("circle", "red", "small", 0, "solid", 0), blue))
    assert score_pair(render(solid, CFG), styled, CFG)["edit_success"] == 0.0


def shift(img: np.ndarray, dy: int, dx: int, fill: tuple[int, int, int]) -> np.ndarray:
    out = np.empty_like(img)
    out[:] = fill
    h, w = img.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        img[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


def test_clean_objects_slightly_off_the_grid_count_as_in_their_cell(edits):
    for e in edits:
        for dy, dx in ((1, 0), (0, -1), (-1, 1)):
            shifted = shift(render(e.target, CFG), dy, dx, PALETTE[e.target.background])
            s = score_pair(shifted, e, CFG)
            assert s["SC"] == 10.0 and s["PQ"] == 10.0 and s["PSNR"] < shapes_edit.PSNR_CAP, (e.instruction, s)


def test_output_resized_to_world_size(edits):
    e = edits[0]
    big = to_pil(render(e.target, CFG)).resize((128, 128), Image.Resampling.NEAREST)
    assert score_pair(big, e, CFG)["O"] == 10.0


class Oracle:
    """Returns the exact target of each sample (looked up by input image and instruction)."""

    def __init__(self, bench: ShapesEdit):
        self.world = bench.world
        self.targets = {(s.image.tobytes(), s.instruction): Scene.from_dict(s.meta["target"]) for s in bench.samples()}

    def edit(self, images, instructions, *, seed=0):
        return [to_pil(render(self.targets[(i.tobytes(), c)], self.world)) for i, c in zip(images, instructions)]


class Identity:
    def edit(self, images, instructions, *, seed=0):
        return list(images)


class SeededNoise:
    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def edit(self, images, instructions, *, seed=0):
        self.calls.append((seed, len(images)))
        rng = np.random.default_rng(seed)
        return [to_pil(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in images]


def test_benchmark_set_is_fixed_balanced_and_held_out():
    bench = ShapesEdit(ShapesEditConfig(n_per_type=4))
    samples = bench.samples()
    assert [s.task for s in samples] == [t for t in supported_edit_types(CFG) for _ in range(4)]
    assert len({s.id for s in samples}) == len(samples)
    again = ShapesEdit(ShapesEditConfig(n_per_type=4)).samples()
    assert [(s.id, s.instruction, s.meta) for s in samples] == [(s.id, s.instruction, s.meta) for s in again]
    assert all(split_of(Scene.from_dict(s.meta["source"]), CFG) == "test" for s in samples)
    # A subset of types draws the same samples for those types.
    color_only = ShapesEdit(ShapesEditConfig(n_per_type=4, edit_types=["color"])).samples()
    assert [s.instruction for s in color_only] == [s.instruction for s in samples if s.task == "color"]
    other_seed = ShapesEdit(ShapesEditConfig(n_per_type=4, seed=1)).samples()
    assert [s.instruction for s in other_seed] != [s.instruction for s in samples]


def test_registered_and_built_from_config():
    spec = BENCHMARKS.get("shapes_edit")
    bench = spec.build(spec.config(n_per_type=2, edit_types=["remove", "action"]))
    assert isinstance(bench, Benchmark)
    assert bench.name == "shapes_edit" and len(bench.samples()) == 4
    with pytest.raises(ValueError, match="supports"):
        ShapesEdit(ShapesEditConfig(edit_types=["text"]))


def test_aggregation_counts_missing_outputs_as_zero(tmp_path):
    bench = ShapesEdit(ShapesEditConfig(n_per_type=2, edit_types=["color", "remove"], lpips=False))
    bench.generate(Oracle(bench), tmp_path, model_name="m", batch_size=3, progress=False)
    color0 = next(s for s in bench.samples() if s.id == "color_000")
    color0.image.save(tmp_path / "m" / "color" / "color_000.png")  # unedited input: SC 0, PQ 10
    (tmp_path / "m" / "remove" / "remove_001.png").unlink()  # missing: scores 0
    (result,) = bench.score(tmp_path, model_name="m")
    assert result.per_task["color"]["SC"] == 5.0 and result.per_task["color"]["PQ"] == 10.0
    assert result.per_task["remove"]["SC"] == 5.0 and result.per_task["remove"]["PQ"] == 5.0
    assert result.metrics["SC"] == 5.0 and result.metrics["PQ"] == 7.5 and result.metrics["O"] == 5.0
    assert result.counts["remove"] == {"n": 2, "scored": 1, "failed": 0, "missing": 1}
    assert result.per_task["remove"]["PSNR"] == shapes_edit.PSNR_CAP  # over existing outputs only
    assert result.meta["lpips"] == "off (config)"
    (tmp_path / "m" / "color" / "color_001.png").write_bytes(b"not a png")
    (result,) = bench.score(tmp_path, model_name="m")
    assert result.counts["color"]["failed"] == 1 and result.per_task["color"]["SC"] == 0.0


def test_identity_and_oracle_editors_end_to_end(tmp_path):
    bench = ShapesEdit(ShapesEditConfig(n_per_type=3, lpips=False))
    for name, editor in (("oracle", Oracle(bench)), ("identity", Identity())):
        bench.generate(editor, tmp_path, model_name=name, batch_size=8, progress=False)
    (oracle,) = bench.score(tmp_path, model_name="oracle")
    (identity,) = bench.score(tmp_path, model_name="identity")
    assert oracle.metrics["O"] == 10.0 and all(c["scored"] == 3 for c in oracle.counts.values())
    assert all(v["SC"] == 0.0 for v in identity.per_task.values()) and identity.metrics["PQ"] == 10.0


def test_generation_resumes_exactly(tmp_path):
    bench = ShapesEdit(ShapesEditConfig(n_per_type=2, edit_types=["color", "add", "style"]))
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    bench.generate(SeededNoise(), full, batch_size=4, progress=False)
    bench.generate(SeededNoise(), resumed, batch_size=4, progress=False)
    kept = resumed / "model" / "color" / "color_000.png"
    stamp = kept.stat().st_mtime_ns
    (resumed / "model" / "style" / "style_001.png").unlink()  # lost in a crash
    editor = SeededNoise()
    bench.generate(editor, resumed, batch_size=4, progress=False)
    assert editor.calls == [(4, 2)]  # only the second batch (samples 4-5) ran again, whole
    assert kept.stat().st_mtime_ns == stamp
    files = sorted(p.relative_to(full) for p in full.rglob("*.png"))
    assert len(files) == 6
    for f in files:
        assert (full / f).read_bytes() == (resumed / f).read_bytes()

    shards = tmp_path / "shards"
    for i in range(2):
        bench.generate(SeededNoise(), shards, batch_size=4, shard=(i, 2), progress=False)
    assert sorted(p.relative_to(shards) for p in shards.rglob("*.png")) == files


def test_load_lpips_without_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(lpips_metric.LpipsWeightsMissing, match="alexnet-owt"):
        lpips_metric.load_lpips("alex")
    with pytest.warns(UserWarning, match="RANDOMLY"):
        model = lpips_metric.load_lpips("alex", allow_random=True)
    assert model.backbone_pretrained is False
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.all(model(x, x) == 0) and torch.all(model(x, y) > 0)
    # The benchmark omits LPIPS and says why.
    bench = ShapesEdit(ShapesEditConfig(n_per_type=1, edit_types=["color"]))
    bench.generate(Identity(), tmp_path / "out", progress=False)
    (result,) = bench.score(tmp_path / "out")
    assert result.meta["lpips"].startswith("omitted:") and "LPIPS" not in result.metrics
    # With a backbone available (a random one standing in for the weights), LPIPS is reported.
    monkeypatch.setattr(lpips_metric, "load_lpips", lambda net: model)
    bench.generate(Oracle(bench), tmp_path / "out", model_name="oracle", progress=False)
    (oracle,) = bench.score(tmp_path / "out", model_name="oracle")
    (result,) = bench.score(tmp_path / "out")
    assert oracle.metrics["LPIPS"] == 0.0 and result.metrics["LPIPS"] > 0.0


def test_the_validation_split_shares_no_scene_with_the_test_split():
    """split: val draws its edits from training-split scenes, so tuning on it never scores a test edit."""
    import json

    from benchmarks.shapes_edit import ShapesEdit, ShapesEditConfig
    from harness.toyworld.scenes import WorldConfig, split_of

    world = WorldConfig()
    val, test = (ShapesEdit(ShapesEditConfig(split=s, n_per_type=15)) for s in ("val", "test"))
    assert {split_of(e.source, world) for _, e in val.edits()} == {"train"}
    assert {split_of(e.source, world) for _, e in test.edits()} == {"test"}
    key = lambda e: json.dumps([e.source.to_dict(), e.instruction], sort_keys=True)  # noqa: E731
    assert not {key(e) for _, e in val.edits()} & {key(e) for _, e in test.edits()}
    assert val.subset == "val" and test.subset == "all"
