"""The built-in world: seeded scenes, exact rendering and parsing, edits, captions, export."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from harness.data.instructions import load_image, read_instructions, read_pairs
from harness.toyworld import text
from harness.toyworld.dataset import build_world_datasets, read_pair_scenes, world_edits
from harness.toyworld.edits import EDIT_TYPES, make_edit, sample_edit, supported_edit_types
from harness.toyworld.parse import parse
from harness.toyworld.render import object_pixels, render
from harness.toyworld.scenes import Obj, Scene, WorldConfig, check_scene, full_world, sample_scene, split_of

WORLDS = {
    "default": WorldConfig(),
    "full": full_world(),
    "64px-3patterns": WorldConfig(size=64, patterns=["solid", "striped", "checkered"]),
    "full-3sizes": full_world(sizes=["small", "medium", "large"], max_objects=2),
}


def rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def test_sampling_is_seeded_valid_and_split():
    cfg = WorldConfig()
    a = [sample_scene(rng(7, i), cfg) for i in range(300)]
    b = [sample_scene(rng(7, i), cfg) for i in range(300)]
    assert a == b
    assert a != [sample_scene(rng(8, i), cfg) for i in range(300)]
    for s in a:
        check_scene(s, cfg)
    n_objects = [len(s.objects) for s in a]
    assert 0.2 < n_objects.count(2) / len(a) < 0.5
    assert {s.style for s in a} == {"filled", "outline"}
    assert all(split_of(sample_scene(rng(1, i), cfg, split="test"), cfg) == "test" for i in range(50))
    assert all(split_of(sample_scene(rng(1, i), cfg, split="train"), cfg) == "train" for i in range(50))
    test_share = np.mean([split_of(s, cfg) == "test" for s in a])
    assert 0.03 < test_share < 0.2  # about world.test_fraction = 0.1


def test_bad_world_config_names_the_key():
    with pytest.raises(ValueError, match="colors and backgrounds must not overlap"):
        WorldConfig(colors=["red", "white", "blue"]).validate()
    with pytest.raises(ValueError, match="shapes: unknown"):
        WorldConfig(shapes=["circle", "hexagon"]).validate()


@pytest.mark.parametrize("world", WORLDS)
def test_parse_inverts_render(world):
    cfg = WORLDS[world]
    cfg.validate()
    for i in range(300 if cfg.size <= 32 else 100):
        scene = sample_scene(rng(2, i), cfg)
        img = render(scene, cfg)
        assert img.shape == (cfg.size, cfg.size, 3) and img.dtype == np.uint8
        assert parse(img, cfg).same_as(scene), scene


@pytest.mark.parametrize("world", WORLDS)
def test_every_drawable_object_looks_different(world):
    """Parsing is unambiguous only if no two objects (in either style) draw the same pixels."""
    cfg = WORLDS[world]
    masks = [object_pixels(cfg.size, cfg.grid, cfg.size_px(size), shape, pos, pattern, style).tobytes()
             for style in cfg.styles for shape in cfg.shapes for size in cfg.sizes
             for pos in range(len(cfg.positions)) for pattern in (cfg.patterns if style == "filled" else ["solid"])]
    assert len(set(masks)) == len(masks)


def test_parse_resizes_and_snaps_colours():
    cfg = WorldConfig()
    scene = sample_scene(rng(3), cfg, n_objects=2)
    img = render(scene, cfg)
    big = np.repeat(np.repeat(img, 2, 0), 2, 1)
    jitter = np.clip(img.astype(int) + rng(4).integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    assert parse(big, cfg).same_as(scene)
    assert parse(jitter, cfg).same_as(scene)


def _changes(source: Scene, target: Scene) -> set[tuple]:
    """Which facts differ: ('background',), ('style',), (id, attribute), (id, 'added'|'removed')."""
    out = set()
    if source.background != target.background:
        out.add(("background",))
    if source.style != target.style:
        out.add(("style",))
    for o in source.objects:
        t = target.find(o.id)
        if t is None:
            out.add((o.id, "removed"))
            continue
        for attr in ("shape", "color", "size", "pos", "pattern"):
            if getattr(o, attr) != getattr(t, attr):
                out.add((o.id, attr))
    out |= {(o.id, "added") for o in target.objects if source.find(o.id) is None}
    return out


@pytest.mark.parametrize("world", WORLDS)
def test_each_edit_changes_its_scene_in_the_intended_way_only(world):
    cfg = WORLDS[world]
    for edit_type in supported_edit_types(cfg):
        for i in range(40):
            e = sample_edit(rng(5, EDIT_TYPES.index(edit_type), i), cfg, edit_type)
            src, tgt = e.source, e.target
            check_scene(src, cfg)
            check_scene(tgt, cfg)
            assert e.edit_type == edit_type
            assert not np.array_equal(render(src, cfg), render(tgt, cfg))
            ch = _changes(src, tgt)
            obj_attrs = {c[1] for c in ch if len(c) == 2}
            ids = {c[0] for c in ch if len(c) == 2}
            if edit_type in ("color", "texture", "action"):
                attr = {"color": "color", "texture": "pattern", "action": "pos"}[edit_type]
                assert obj_attrs == {attr} and len(ids) == 1 and len(ch) == 1
                (oid,) = ids
                assert e.object == text.object_name(src.find(oid))
                new = getattr(tgt.find(oid), attr)
                assert (cfg.positions[new] if attr == "pos" else new) in e.instruction
            elif edit_type == "adjust":
                assert len(ch) == 1 and obj_attrs <= {"size", "shape"}
                (oid,) = ids
                if obj_attrs == {"size"}:
                    step = cfg.sizes.index(tgt.find(oid).size) - cfg.sizes.index(src.find(oid).size)
                    assert abs(step) == 1
                    assert any(w in e.instruction for w in (("bigger", "larger", "enlarge") if step > 0
                                                            else ("smaller", "shrink")))
                else:
                    assert tgt.find(oid).shape in e.instruction
            elif edit_type == "add":
                assert len(src.objects) == 1 and obj_attrs == {"added"} and len(ch) == 1
                new = tgt.objects[-1]
                assert new.pos not in src.occupied() and new.color not in src.colors()
                assert text.describe(new, tgt.style, size=True) in e.instruction
                assert cfg.positions[new.pos] in e.instruction
            elif edit_type == "remove":
                assert len(src.objects) == 2 and len(tgt.objects) == 1 and ch == {(next(iter(ids)), "removed")}
                assert e.object == text.object_name(src.find(next(iter(ids))))
            elif edit_type == "replace":
                assert len(ids) == 1 and {"shape", "color"} <= obj_attrs <= {"shape", "color", "pattern"}
                assert text.describe(tgt.find(next(iter(ids))), tgt.style) in e.instruction
            elif edit_type == "background":
                assert ch == {("background",)} and tgt.background in e.instruction
            elif edit_type == "style":
                assert ("style",) in ch and obj_attrs <= {"pattern"}
                assert all(o.pattern == "solid" for o in tgt.objects)
            elif edit_type == "customization":
                assert len(src.objects) == 1 and obj_attrs == {"pos"} and ("background",) in ch and len(ch) == 2
                assert e.instruction.startswith(
                    "Generate the main object shown in the first image in a different setting and pose: ")
                assert tgt.background in e.instruction and cfg.positions[tgt.objects[0].pos] in e.instruction
            else:
                raise AssertionError(f"untested edit type {edit_type}")


def test_edits_that_do_not_apply_are_refused():
    cfg = WorldConfig()
    one = Scene("white", "filled", (Obj("circle", "red", "small", 4, "striped", 0),))
    two = one.with_object(Obj("square", "blue", "large", 0, "solid", 1))
    outline = replace(one, style="outline", objects=(replace(one.objects[0], pattern="solid"),))
    assert make_edit(one, "remove", rng(0), cfg) is None  # never remove the only object (App. D)
    assert make_edit(two, "add", rng(0), cfg) is None
    assert make_edit(two, "customization", rng(0), cfg) is None
    assert make_edit(outline, "texture", rng(0), cfg) is None
    assert make_edit(two, "remove", rng(0), cfg) is not None
    with pytest.raises(ValueError, match="supports"):
        make_edit(one, "text", rng(0), cfg)


def test_edit_generation_is_seeded():
    cfg = WorldConfig()
    for t in EDIT_TYPES:
        a, b = sample_edit(rng(9, 1), cfg, t), sample_edit(rng(9, 1), cfg, t)
        assert a == b and a.instruction == b.instruction and a.caption_edit == b.caption_edit
    assert len({sample_edit(rng(9, i), cfg, "color").instruction for i in range(20)}) > 5


def test_captions_do_not_pin_positions_or_sizes():
    cfg = WorldConfig()
    for i in range(200):
        s = sample_scene(rng(11, i), cfg)
        moved = replace(s, objects=tuple(replace(o, pos=(o.pos + 1) % 9 if len(s.objects) == 1 else o.pos,
                                                 size="large" if o.size == "small" else "small")
                                         for o in s.objects))
        cap = text.caption(s, rng(12, i), cfg)
        assert cap == text.caption(moved, rng(12, i), cfg)
        assert not any(w in text.words(cap) for w in ("small", "large", "left", "right", "top", "bottom", "center"))
        assert all(o.color in cap and o.shape in cap for o in s.objects) and s.background in cap


def test_captions_with_positions_name_each_objects_cell_but_not_its_size():
    cfg = WorldConfig(caption_positions=True)
    for i in range(200):
        s = sample_scene(rng(11, i), cfg)
        cap = text.caption(s, rng(12, i), cfg)
        for o in s.objects:
            assert f"{o.color} {o.shape} in the {cfg.positions[o.pos]}" in cap, cap
        without = cap
        for o in s.objects:
            without = without.replace(f" in the {cfg.positions[o.pos]}", "", 1)
        assert without == text.caption(s, rng(12, i))  # otherwise the caption the world writes without positions
        resized = replace(s, objects=tuple(replace(o, size="large" if o.size == "small" else "small") for o in s.objects))
        assert cap == text.caption(resized, rng(12, i), cfg)
        if len(s.objects) == 1:
            moved = replace(s, objects=(replace(s.objects[0], pos=(s.objects[0].pos + 1) % len(cfg.positions)),))
            assert cap != text.caption(moved, rng(12, i), cfg)


def test_captions_in_reading_order_name_the_earlier_cell_first_and_otherwise_agree():
    cfg = WorldConfig(caption_order="reading")
    swapped = 0
    for i in range(200):
        s = sample_scene(rng(11, i), cfg, n_objects=2)
        cap, plain = text.caption(s, rng(12, i), cfg), text.caption(s, rng(12, i), WorldConfig())
        first, second = sorted(s.objects, key=lambda o: o.pos)
        assert cap.index(f"{first.color} {first.shape}") < cap.index(f"{second.color} {second.shape}"), cap
        # the same words as the random-order caption (the generator's draws agree), names maybe swapped
        assert sorted(text.words(cap)) == sorted(text.words(plain))
        swapped += cap != plain
        swap = replace(s, objects=tuple(replace(o, pos=first.pos + second.pos - o.pos) for o in s.objects))
        assert text.caption(swap, rng(12, i), cfg) != cap  # the order tells which object comes first
        resized = replace(s, objects=tuple(replace(o, size="large" if o.size == "small" else "small") for o in s.objects))
        assert text.caption(resized, rng(12, i), cfg) == cap  # but not how big
    assert 60 < swapped < 140  # random order agrees with reading order about half the time
    one = sample_scene(rng(11, 0), cfg, n_objects=1)
    assert text.caption(one, rng(12, 0), cfg) == text.caption(one, rng(12, 0), WorldConfig())
    with pytest.raises(ValueError, match="caption_order"):
        WorldConfig(caption_order="size").validate()


@pytest.mark.parametrize("world", WORLDS)
def test_vocabulary_covers_every_text(world):
    cfg = WORLDS[world]
    vocab = set(text.vocabulary(cfg))
    seen = set()
    for t in supported_edit_types(cfg):
        for i in range(60):
            e = sample_edit(rng(13, i), cfg, t)
            for s in (e.instruction, e.caption_ref, e.caption_edit, e.object):
                seen |= set(text.words(s))
    seen |= {w for i in range(20) for w in text.words(text.noop_instruction(rng(14, i)))}
    assert seen <= vocab, seen - vocab
    assert len(vocab) < 200


def test_export_round_trips_and_is_reused(tmp_path):
    cfg = WorldConfig()
    inst_dir, pair_dir = build_world_datasets(tmp_path, cfg, n_refs=15, seed=3, edits_per_ref=2, progress=False)
    records, pairs = read_instructions(inst_dir), read_pairs(pair_dir)
    expected = [(scene, e) for _, scene, edits in world_edits(cfg, 15, 3, 2) for e in edits]
    assert len(records) == len(pairs) == len(expected) == 30
    scenes = read_pair_scenes(pair_dir)
    for rec, pair, (scene, e) in zip(records, pairs, expected):
        assert (rec.instruction, rec.edit_type, rec.caption_ref, rec.caption_edit, rec.object) == \
            (e.instruction, e.edit_type, e.caption_ref, e.caption_edit, e.object)
        assert pair.id == rec.id and pair.instruction == rec.instruction and pair.image == rec.image
        assert np.array_equal(np.asarray(load_image(inst_dir, rec.image)), render(scene, cfg))
        assert np.array_equal(np.asarray(load_image(pair_dir, pair.image)), render(scene, cfg))
        assert np.array_equal(np.asarray(load_image(pair_dir, pair.target)), render(e.target, cfg))
        assert scenes[rec.id] == (e.source, e.target)
        assert split_of(scene, cfg) == "train"
    assert not (inst_dir / "targets").exists()  # NP-Edit's folder holds no target image

    meta = inst_dir / "dataset.json"
    stamp = meta.stat().st_mtime_ns
    assert build_world_datasets(tmp_path, cfg, 15, 3, 2, progress=False) == (inst_dir, pair_dir)
    assert meta.stat().st_mtime_ns == stamp  # complete export reused

    # A crash that left one folder unfinished: rebuilt, identical.
    (pair_dir / "dataset.json").unlink()
    build_world_datasets(tmp_path, cfg, 15, 3, 2, progress=False)
    assert read_pairs(pair_dir) == pairs and json.loads((pair_dir / "dataset.json").read_text())["count"] == 30
    assert not list(tmp_path.glob(".build-*"))

    with pytest.raises(FileExistsError, match="other world parameters"):
        build_world_datasets(tmp_path, cfg, 16, 3, 2, progress=False)


def test_export_balances_edit_types():
    cfg = WorldConfig()
    counts = dict.fromkeys(supported_edit_types(cfg), 0)
    for _, _, edits in world_edits(cfg, 300, 0, 2):
        assert len(edits) == 2 and edits[0].edit_type != edits[1].edit_type
        for e in edits:
            counts[e.edit_type] += 1
    assert max(counts.values()) - min(counts.values()) <= 0.15 * 60, counts
