"""The built-in world's critics: ground-truth answers, degraded candidates, the training path, a
short training run, saving/reloading, and the shipped critics' held-out accuracy."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from harness.models.llava import LlavaCriticConfig, load_llava_critic
from harness.toyworld import critics as C
from harness.toyworld.edits import Edit, sample_edit, supported_edit_types
from harness.toyworld.parse import parse
from harness.toyworld.scenes import Obj, Scene, WorldConfig, sample_scene
from methods.questions import questions_for

WORLD = WorldConfig()
TINY = C.CriticArch(vision_dim=16, vision_layers=1, vision_heads=2, text_dim=16, text_layers=1, text_heads=2)


def rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def answers(edit: Edit, shown: Scene) -> dict[str, bool]:
    return {qa.kind: qa.answer for qa in C.questions(edit, shown)}


# ---------------------------------------------------------------------------------------------
# Ground truth


@pytest.mark.parametrize("edit_type", supported_edit_types(WORLD))
def test_correct_and_noop_candidates_get_the_papers_answers(edit_type):
    """A clean correct edit gets exactly the answers methods.questions expects of a correct edit;
    the unedited input fails the edit question and passes the identity question."""
    for i in range(15):
        e = sample_edit(rng(1, i), WORLD, edit_type, split="train")
        expected = [q.answer == "Yes" for q in questions_for(e.edit_type, e.instruction, e.object)]
        qas = C.questions(e, e.target)
        assert [qa.answer for qa in qas] == expected
        assert [qa.text for qa in qas] == [q.text for q in questions_for(e.edit_type, e.instruction, e.object)]
        noop = answers(e, e.source)
        if edit_type == "customization":
            assert noop == {"custom_context": False, "custom_identity": True}
        elif edit_type == "remove":
            assert noop == {"removal": True, "identity": True}
        else:
            assert noop == {"edit": False, "identity": True}


def _scene(*objs: Obj, bg: str = "white", style: str = "filled") -> Scene:
    return Scene(bg, style, tuple(objs))


def test_answers_on_hand_built_candidates():
    red = Obj("circle", "red", "large", 0, "solid", id=0)
    blue_sq = Obj("square", "blue", "small", 4, "striped", id=1)
    src = _scene(red, blue_sq)
    target = _scene(replace(red, color="green"), blue_sq)
    e = Edit("color", "make the red circle green", "red circle", src, target)
    assert answers(e, target) == {"edit": True, "identity": True}
    # wrong colour: the instruction is not executed, but nothing else changed
    assert answers(e, _scene(replace(red, color="yellow"), blue_sq)) == {"edit": False, "identity": True}
    # the right colour plus the square moved: executed, identity broken
    assert answers(e, _scene(replace(red, color="green"), replace(blue_sq, pos=8))) == {"edit": True, "identity": False}
    # the right colour plus an extra object: identity broken
    extra = Obj("triangle", "purple", "small", 2, id=2)
    assert answers(e, _scene(replace(red, color="green"), blue_sq, extra)) == {"edit": True, "identity": False}

    rm = Edit("remove", "remove the blue square", "blue square", src, _scene(red))
    assert answers(rm, _scene(red)) == {"removal": False, "identity": True}
    assert answers(rm, _scene(blue_sq)) == {"removal": True, "identity": False}  # removed the wrong one

    one = _scene(Obj("diamond", "orange", "small", 4, "striped", id=0), bg="gray")
    moved = _scene(Obj("diamond", "orange", "small", 6, "striped", id=0), bg="black")
    cu = Edit("customization", "Generate the main object ...", "orange diamond", one, moved)
    assert answers(cu, moved) == {"custom_context": True, "custom_identity": True}
    assert answers(cu, _scene(Obj("diamond", "orange", "small", 6, "solid", id=0), bg="black")) == \
        {"custom_context": True, "custom_identity": False}  # another texture
    assert answers(cu, _scene(Obj("circle", "orange", "small", 6, "striped", id=0), bg="black")) == \
        {"custom_context": False, "custom_identity": False}  # not the same object


def test_candidate_kinds_earn_both_answers_for_every_question_kind():
    pool = C.build_pool(C.CriticDataRecipe(p_teacher=0.0), 600, seed=3)
    for kind in C.KINDS:
        labels = [qa.answer for qs in pool.qas for qa in qs if qa.kind == kind]
        assert len(labels) > 20 and 0.2 < np.mean(labels) < 0.85, (kind, len(labels), np.mean(labels))
    assert {"clean", "degraded"} <= set(pool.source)
    for src, cand, qs, ck in zip(pool.source, pool.cands, pool.qas, pool.candidate):
        if src == "clean" and ck == "correct":
            assert all(qa.answer == (qa.kind not in ("removal",)) for qa in qs)


def test_degraded_candidates_are_labelled_by_what_they_show():
    """Mild degradations keep the scene the parser reads (so labels stay those of the clean
    scene); a label always follows the parse of the degraded image."""
    same = {k: [] for k in C.DEGRADATIONS}
    for i in range(60):
        scene = sample_scene(rng(5, i), WORLD, split="train")
        for k in C.DEGRADATIONS:
            img = C.degrade(scene, WORLD, rng(6, i), kind=k)
            assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
            same[k].append(parse(img, WORLD).same_as(scene))
    for k, share in (("shift", 0.85), ("colors", 0.85), ("noise", 0.85), ("blur", 0.7)):
        assert np.mean(same[k]) > share, (k, np.mean(same[k]))
    assert np.mean(same["partial"]) < 1.0  # partly drawn shapes do change what some candidates show


def test_critic_vocabulary_spells_every_question_and_the_inventory():
    from harness.models.tiny import save_tiny_llava

    vocab = C.critic_vocabulary(WORLD)
    folder = save_tiny_llava(pytest.importorskip("tempfile").mkdtemp() + "/c", vocab=vocab, image_size=48, patch_size=16)
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(folder).tokenizer
    for t in supported_edit_types(WORLD):
        for i in range(10):
            e = sample_edit(rng(7, i), WORLD, t)
            for qa in C.questions(e, e.target):
                assert tok.unk_token_id not in tok(qa.text)["input_ids"], qa.text
            inventory = C.INVENTORY + " " + C.inventory(e.source, e.target, WORLD, rng(3, i))
            assert tok.unk_token_id not in tok(inventory)["input_ids"], inventory


def test_inventory_states_what_each_image_has():
    ref = _scene(Obj("circle", "red", "large", 0, "solid", id=0), Obj("square", "blue", "small", 4, "striped", id=1))
    shown = _scene(Obj("triangle", "red", "large", 0, "solid", id=0))
    text = C.inventory(ref, shown, WORLD, rng(1))
    items = [item.split() for item in text.split(" , ")]
    got = {(which, word): answer == "Yes" for which, word, answer in items}
    assert len(items) == len(got) == 2 * (len(WORLD.colors) + len(WORLD.shapes))
    yes = {k for k, v in got.items() if v}
    assert yes == {("first", "red"), ("first", "blue"), ("first", "circle"), ("first", "square"),
                   ("second", "red"), ("second", "triangle")}
    assert C.inventory(ref, shown, WORLD, rng(1)) == text != C.inventory(ref, shown, WORLD, rng(2))  # order: seeded


# ---------------------------------------------------------------------------------------------
# Training and storage


def tiny_recipe(**kw) -> C.CriticRecipe:
    data = C.CriticDataRecipe(p_teacher=0.0, teacher_bank=0, pairs=64)
    base = dict(size="small", arch=TINY, data=data, steps=40, batch_pairs=8, lr=3e-3, warmup_steps=5, save_dtype="float32")
    return C.CriticRecipe(**{**base, **kw})


@pytest.fixture(scope="module")
def small_pool():
    return C.build_pool(C.CriticDataRecipe(p_teacher=0.0), 64, seed=11)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_pool):
    folder = tmp_path_factory.mktemp("critic") / "critic-small"
    C.train_critic(tiny_recipe(), folder, small_pool, progress=False)
    return folder


def test_training_path_is_the_inference_path(tmp_path, small_pool):
    """answer_logits (gradients into both images) equals VLMCritic.next_token_logits."""
    folder = C.build_initial_folder(tmp_path / "init", tiny_recipe())
    critic = C.trainable_critic(folder)
    pairs = [0, 3, 5]
    images, texts, cand, ref, _, flat = C.batch_inputs(small_pool, pairs)
    ours = C.answer_logits(critic, texts, images, cand, ref)
    theirs = critic.next_token_logits(texts, images[len(pairs):], images[: len(pairs)], [c - len(pairs) for c in cand],
                                      ref_mask=[r is not None for r in ref])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours.sum().backward()
    patch = next(p for n, p in critic.model.named_parameters() if n.endswith("patch_embedding.weight"))
    assert patch.grad is not None and patch.grad.abs().sum() > 0


def test_short_training_lowers_the_loss(trained, small_pool):
    from harness.toyworld.pretrain import read_recipe

    curve = read_recipe(trained)["train"]["loss_curve"]
    assert len(curve) == 1  # one window of 40 steps: compare the loss before and after instead
    init = C.trainable_critic(C.build_initial_folder(trained.parent / "init2", tiny_recipe()))
    after = C.trainable_critic(trained)
    with torch.no_grad():
        pairs = list(range(32))
        assert float(C.answer_loss(after, small_pool, pairs)) < 0.7 * float(C.answer_loss(init, small_pool, pairs))


def inventory_loss(critic, pool, pairs, seed=0):
    images = C.to_tensor(np.concatenate([pool.refs[pairs], pool.cands[pairs]]))
    n, g = len(pairs), rng(seed)
    texts = [C.inventory(*pool.scenes[i], WORLD, g) for i in pairs]
    return C.description_loss(critic, critic.encode_images(images), texts, prompt=C.INVENTORY,
                              images=[[k, n + k] for k in range(n)], only={*critic.yes_ids, *critic.no_ids})


def test_inventory_phase_lowers_the_inventory_loss_and_scores_only_the_answers(tmp_path, small_pool):
    r = tiny_recipe(inventory_steps=40, steps=40, lr=1e-2)
    assert C.train_critic(r, tmp_path / "c", small_pool, progress=False) is not None
    init = C.trainable_critic(C.build_initial_folder(tmp_path / "init", r))
    after = C.trainable_critic(tmp_path / "c")
    pairs = list(range(32))
    with torch.no_grad():
        before_loss, after_loss = float(inventory_loss(init, small_pool, pairs)), float(inventory_loss(after, small_pool, pairs))
        # scored on Yes / No only: after training it is near the answers' entropy (about a quarter of
        # the 20 per sequence are Yes), far below the loss of a text whose words come in a random order
        share_yes = np.mean([item.split()[2] == "Yes" for i in pairs
                             for item in C.inventory(*small_pool.scenes[i], WORLD, rng(0)).split(" , ")])
        entropy = -(share_yes * np.log(share_yes) + (1 - share_yes) * np.log(1 - share_yes))
    assert after_loss < 0.8 * before_loss and after_loss < entropy + 0.1, (before_loss, after_loss, entropy)


def test_the_inventory_phase_is_part_of_the_hash():
    from harness.toyworld.pretrain import recipe_hash

    r = C.default_critic_recipe("small")
    assert r.inventory_steps > 0 and r.inventory_weight > 0  # the default curriculum has the phase
    assert recipe_hash(r) != recipe_hash(replace(r, inventory_steps=0))
    assert recipe_hash(r) != recipe_hash(replace(r, inventory_weight=0.0))


def test_saved_critic_reloads_and_answers_identically(trained, small_pool):
    a = load_llava_critic(LlavaCriticConfig(path=str(trained)))
    b = load_llava_critic(LlavaCriticConfig(path=str(trained)))
    live = C.trainable_critic(trained)
    pairs = [1, 2, 4, 8]
    images, texts, cand, ref, _, _ = C.batch_inputs(small_pool, pairs)
    n = len(pairs)
    args = (texts, images[n:], images[:n], [c - n for c in cand])
    la = a.next_token_logits(*args, ref_mask=[r is not None for r in ref])
    torch.testing.assert_close(la, b.next_token_logits(*args, ref_mask=[r is not None for r in ref]), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(la, C.answer_logits(live, texts, images, cand, ref), rtol=1e-5, atol=1e-5)


def test_training_resumes_exactly(tmp_path, small_pool):
    r = tiny_recipe(steps=6)
    C.train_critic(r, tmp_path / "full", small_pool, progress=False)
    assert C.train_critic(r, tmp_path / "split", small_pool, progress=False, stop_after=3) is None
    C.train_critic(r, tmp_path / "split", small_pool, progress=False)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The shipped critics


@pytest.fixture(scope="module")
def shipped_accuracy() -> dict[str, float]:
    """Each shipped critic's accuracy on 160 held-out (test-split) clean pairs (320 questions)."""
    from harness.toyworld import assets

    pool = C.build_pool(C.CriticDataRecipe(p_teacher=0.0), 160, split="test", seed=7, p_degraded=0.0)
    acc = {}
    for size in C.SIZES:
        folder = assets.locate(assets.critic_name(size), assets.critic_recipe(size))
        assert folder is not None and folder.parent == assets.PRETRAINED, \
            f"no shipped {size} critic for the current recipe: run `python -m harness.toyworld pretrain --out harness/toyworld/pretrained`"
        critic = load_llava_critic(LlavaCriticConfig(path=str(folder)))
        acc[size] = C.accuracy_table(C.predictions(critic, pool))["clean"]["all"]
    return acc


def test_shipped_critics_answer_held_out_questions_better_with_size(shipped_accuracy):
    acc = shipped_accuracy
    assert acc["small"] < acc["medium"] < acc["large"], acc


def test_shipped_large_critic_answers_over_90_percent_of_held_out_questions(shipped_accuracy):
    assert shipped_accuracy["large"] > 0.9, shipped_accuracy


def test_accuracy_by_edit_type_counts_each_types_questions(small_pool):
    pool = small_pool
    clean_types = sorted({pool.edit_type[i] for i in range(len(pool)) if pool.source[i] == "clean"})
    assert len(clean_types) > 1
    target = clean_types[0]
    # right on every question of the target type's pairs, wrong on every other
    preds = [(qa, qa.answer == (pool.edit_type[i] == target), pool.source[i]) for i in range(len(pool)) for qa in pool.qas[i]]
    by_type = C.accuracy_by_edit_type(pool, preds)
    assert by_type == {t: 1.0 if t == target else 0.0 for t in clean_types}
    with pytest.raises(ValueError, match="predictions for a pool"):
        C.accuracy_by_edit_type(pool, preds[:-1])


def test_degraded_images_do_not_depend_on_the_process():
    """The held-out and training pools are seeded: the same in every process (Python's string
    hashing, and so a set's order, changes from one process to the next)."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, numpy as np\n"
            "from harness.toyworld import critics as C\n"
            "from harness.toyworld.scenes import WorldConfig, sample_scene\n"
            "w = WorldConfig()\n"
            "images = [C.degrade(sample_scene(np.random.default_rng(i), w, n_objects=2), w, np.random.default_rng(i), 'colors')\n"
            "          for i in range(8)]\n"
            "print(hashlib.sha256(np.stack(images).tobytes()).hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(4)}
    assert len(digests) == 1, digests
