"""The built-in world's assets: recipe-keyed cache, shipped copies, registry entries, datasets,
the pretraining command, and the package data that ships the weights."""
from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest
import torch

from harness.config import from_dict
from harness.registry import BACKBONES, CRITICS
from harness.toyworld import assets
from harness.toyworld import critics as C
from harness.toyworld import teacher as T
from harness.toyworld.pretrain import read_recipe, recipe_hash, write_recipe

REPO = Path(__file__).resolve().parents[1]


def tiny_teacher(**kw) -> T.TeacherRecipe:
    base = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, text_hidden_size=16, text_layers=2,
                steps=2, batch_size=4, ema_decay=0.0, save_dtype="float32")
    return T.TeacherRecipe(**{**base, **kw})


def tiny_critic(**kw) -> C.CriticRecipe:
    arch = C.CriticArch(vision_dim=16, vision_layers=1, vision_heads=2, text_dim=16, text_layers=1, text_heads=2)
    data = C.CriticDataRecipe(p_teacher=0.0, teacher_bank=0, pairs=16)
    return C.CriticRecipe(**{**dict(size="small", arch=arch, data=data, steps=2, batch_pairs=4), **kw})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NPEDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------
# Cache keyed by recipe hash


def test_cache_hits_the_same_recipe_and_misses_a_changed_one(cache, monkeypatch):
    calls = []
    real = T.train_teacher

    def counting(recipe, folder, **kw):
        calls.append(recipe_hash(recipe))
        return real(recipe, folder, **kw)

    monkeypatch.setattr(T, "train_teacher", counting)
    a = assets.ensure_teacher(tiny_teacher(), progress=False)
    assert a == cache / "toyworld" / f"teacher-{recipe_hash(tiny_teacher())}"
    assert read_recipe(a)["hash"] == recipe_hash(tiny_teacher()) and calls == [recipe_hash(tiny_teacher())]
    assert assets.ensure_teacher(tiny_teacher(), progress=False) == a and len(calls) == 1  # hit
    b = assets.ensure_teacher(tiny_teacher(lr=5e-4), progress=False)  # another recipe: miss
    assert b != a and len(calls) == 2
    assert assets.ensure_teacher(tiny_teacher(), force=True, progress=False) == a and len(calls) == 3


def test_critic_cache_and_shared_training_examples(cache, monkeypatch):
    built = []
    real = C.build_pool
    monkeypatch.setattr(C, "build_pool", lambda *a, **k: built.append(1) or real(*a, **k))
    small = assets.ensure_critic(recipe=tiny_critic(), progress=False)
    assert small.name == f"critic-small-{recipe_hash(tiny_critic())}" and len(built) == 1
    other = assets.ensure_critic(recipe=tiny_critic(steps=3), progress=False)  # same data: pool reused
    assert other != small and len(built) == 1
    assert assets.ensure_critic(recipe=tiny_critic(), progress=False) == small


def test_hash_ignores_nothing_that_changes_the_weights():
    r = T.TeacherRecipe()
    assert recipe_hash(r) == recipe_hash(T.TeacherRecipe())
    for change in ({"steps": r.steps + 1}, {"p_uncond": 0.2}, {"save_dtype": "float32"}, {"pos_spacing": 0.0},
                   {"qk_norm": "none"}, {"lr_schedule": "cosine"}, {"t_sampling": "uniform"}, {"t_shift": 1.0}):
        assert recipe_hash(T.TeacherRecipe(**change)) != recipe_hash(r)
    # how the teacher is sampled for its bar is not in its weights
    assert recipe_hash(T.TeacherRecipe(sample_steps=7, sample_guidance=1.5, sample_shift=1.0,
                                       sample_stochastic=False)) == recipe_hash(r)
    # a critic trained on teacher samples is keyed by its teacher too; one trained without is not
    with_samples = C.CriticRecipe(data=C.CriticDataRecipe(p_teacher=0.1, teacher_hash="abc"))
    assert recipe_hash(with_samples) != recipe_hash(C.CriticRecipe(data=C.CriticDataRecipe(p_teacher=0.1, teacher_hash="abd")))
    default = C.default_critic_recipe("large", "abc")
    assert (default.data.teacher_hash == "abc") == (default.data.p_teacher > 0)


# ---------------------------------------------------------------------------------------------
# Shipped copies


def test_the_shipped_models_are_those_of_the_current_recipes(cache):
    """ensure_* find the shipped copies (no training, nothing written to the cache)."""
    assert assets.locate(assets.TEACHER, assets.teacher_recipe()) == assets.PRETRAINED / "teacher"
    for size in C.SIZES:
        r = assets.critic_recipe(size)
        assert r.data.teacher_hash == (recipe_hash(assets.teacher_recipe()) if r.data.p_teacher > 0 else "")
        assert assets.ensure_critic(size) == assets.PRETRAINED / assets.critic_name(size)
    assert assets.ensure_teacher() == assets.PRETRAINED / "teacher"
    assert not cache.exists()


def test_shipped_files_are_small_half_precision_and_package_data():
    files = [p for p in assets.PRETRAINED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    unshipped = [str(p.relative_to(assets.PRETRAINED)) for p in files if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    assert not unshipped, f"pyproject package-data misses {unshipped}"
    from safetensors import safe_open

    for p in files:
        if p.suffix == ".safetensors":
            with safe_open(p, "pt") as f:
                assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, p
    summary = json.loads((assets.PRETRAINED / "recipe.json").read_text())
    assert summary["models"]["teacher"]["hash"] == recipe_hash(assets.teacher_recipe())


# ---------------------------------------------------------------------------------------------
# Registry entries


def test_toy_backbone_entry_builds_the_shipped_teacher_and_other_folders(tmp_path):
    from harness.models.sampler import few_step_sample
    from harness.models.sd3 import SD3Backbone, SD3Config

    spec = BACKBONES.get("toy_mmdit")
    cfg = from_dict(spec.config, {**spec.defaults, "name": "toy_mmdit"})
    assert isinstance(cfg, SD3Config) and cfg.path == "" and cfg.shift == 1.0
    bb = spec.build(cfg)
    assert isinstance(bb, SD3Backbone) and bb.image_size == 32 and bb.latent_shape() == (3, 32, 32)
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = few_step_sample(bb.make_denoiser(trainable=False), bb.encode_text(["make the red circle blue", "do nothing"]),
                              bb.encode_image(y), torch.randn(2, 3, 32, 32, generator=g), steps=2)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    other = T.build_initial_folder(tmp_path / "other", tiny_teacher())
    bb2 = spec.build(from_dict(spec.config, {**spec.defaults, "path": str(other)}))
    assert bb2.transformer.config.num_layers == 1


def test_toy_critic_entry_builds_every_size():
    from harness.models.critic import VLMCritic
    from methods.questions import questions_for

    spec = CRITICS.get("toy_llava")
    q = questions_for("color", "make the red circle blue", "red circle")
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    for size in C.SIZES:
        critic = spec.build(from_dict(spec.config, {"name": "toy_llava", "size": size}))
        assert isinstance(critic, VLMCritic)
        yn = critic.yes_no_logits(critic.next_token_logits([x.text for x in q], y, y))
        assert yn.shape == (2, 2) and torch.isfinite(yn).all()
    with pytest.raises(Exception, match="allowed"):
        from_dict(spec.config, {"name": "toy_llava", "size": "huge"})


def test_run_config_names_them():
    from harness.runconfig import RunConfig

    cfg = from_dict(RunConfig, {"model": {"backbone": "toy_mmdit", "critic": {"name": "toy_llava", "size": "medium"}}})
    assert cfg.model.backbone.name == "toy_mmdit" and cfg.model.critic.size == "medium"


def test_a_run_on_another_world_gets_that_worlds_models(cache):
    from harness.config import ConfigError, build_section, config_hash, load_run_config, to_dict
    from harness.toyworld.scenes import WorldConfig, full_world

    toy = str(REPO / "configs/toy/np_edit.yaml")
    default = load_run_config(toy)
    assert default.model.backbone.world == default.model.critic.world == WorldConfig()
    # the models' world is the benchmark's, which the run id has already
    assert "world" not in to_dict(default.model.backbone, for_hash=True)
    assert "world" not in to_dict(default.model.critic, for_hash=True)

    full = full_world()
    cfg = load_run_config(toy, {"eval.benchmarks": [{"name": "shapes_edit", "world": to_dict(full)}],
                                "model.critic.size": "small"})
    assert cfg.model.backbone.world == cfg.model.critic.world == full
    assert config_hash(cfg) != config_hash(default)
    # an exported editor rebuilds its backbone from the section's dict (methods.common.load_editor)
    assert build_section(BACKBONES, to_dict(cfg.model.backbone), "editor.json", "backbone") == cfg.model.backbone

    # the built-in models of that world: found by their recipes' hashes (made here untrained, as
    # pretraining would have left them)
    t_recipe = assets.teacher_recipe(full)
    c_recipe = assets.critic_recipe("small", full)
    assert recipe_hash(t_recipe) != recipe_hash(assets.teacher_recipe())
    assert c_recipe.data.world == full and c_recipe.arch.image_size == c_recipe.arch.patch_size * 3
    for name, recipe, build in ((assets.TEACHER, t_recipe, T.build_initial_folder),
                                (assets.critic_name("small"), c_recipe, C.build_initial_folder)):
        folder = build(assets.target_folder(name, recipe), recipe)
        write_recipe(folder, name, recipe)
    backbone = BACKBONES.get("toy_mmdit").build(cfg.model.backbone)
    assert Path(backbone.cfg.path) == assets.target_folder(assets.TEACHER, t_recipe)
    assert {"purple", "diamond", "center"} <= set(backbone.clip_tokenizers[0].get_vocab())
    critic = CRITICS.get("toy_llava").build(cfg.model.critic)
    assert critic.name == f"llava:{assets.target_folder(assets.critic_name('small'), c_recipe)}"
    assert {"purple", "diamond", "center"} <= set(critic.tokenizer.get_vocab())
    y = torch.rand(1, 3, 48, 48) * 2 - 1
    assert torch.isfinite(critic.yes_no_logits(critic.next_token_logits(["Is there a purple diamond?"], y, y))).all()

    # a model section set to another world than the benchmark's is refused, naming what differs
    with pytest.raises(ConfigError, match="grid"):
        load_run_config(toy, ["model.critic.world.grid=3"])


def test_a_run_is_pinned_to_its_built_in_models(cache, monkeypatch):
    from dataclasses import replace

    from harness.config import config_hash, load_run_config

    toy = str(REPO / "configs/toy/np_edit.yaml")
    cfg = load_run_config(toy, ["model.critic.size=small"])
    assert cfg.model.backbone.recipe == recipe_hash(assets.teacher_recipe())
    assert cfg.model.critic.recipe == recipe_hash(assets.critic_recipe("small"))
    assert load_run_config(toy, ["model.backbone.path=/some/sd3"]).model.backbone.recipe == ""  # not built in

    # a run made with the shipped critic still finds it after the recipe changes (a new run would
    # get the new one); a run pinned to a recipe neither shipped nor cached is refused, naming it
    schedule = C.DEFAULT_SCHEDULES["small"]
    monkeypatch.setitem(C.DEFAULT_SCHEDULES, "small", {**schedule, "steps": 4000})
    made = load_run_config(toy, ["model.critic.size=small"])
    made_recipe = assets.critic_recipe("small")
    monkeypatch.setitem(C.DEFAULT_SCHEDULES, "small", {**schedule, "steps": 4500})
    new = load_run_config(toy, ["model.critic.size=small"])
    assert len({cfg.model.critic.recipe, made.model.critic.recipe, new.model.critic.recipe}) == 3
    assert len({config_hash(cfg), config_hash(made), config_hash(new)}) == 3
    assert assets.builtin_folder(cfg.model.critic) == assets.PRETRAINED / "critic-small"
    pinned = made.model.critic
    with pytest.raises(ValueError, match=f"recipe '{pinned.recipe}'"):
        assets.builtin_folder(pinned)
    folder = C.build_initial_folder(assets.target_folder(assets.critic_name("small"), made_recipe), made_recipe)
    write_recipe(folder, "critic", made_recipe)
    assert assets.builtin_folder(pinned) == folder
    with pytest.raises(ValueError, match="no critic-medium of that recipe"):  # a pinned recipe is of one size
        assets.builtin_folder(replace(pinned, size="medium"))


# ---------------------------------------------------------------------------------------------
# Datasets and the command


def test_world_dataset_is_built_once_over_the_training_split(cache, monkeypatch):
    from harness.data.instructions import read_instructions
    from harness.runconfig import RunConfig
    from harness.toyworld.dataset import read_pair_scenes
    from harness.toyworld.scenes import split_of

    monkeypatch.setattr(assets, "DATASET_REFS", 12)
    inst, pairs = assets.world_dataset(RunConfig())
    assert inst.parent == pairs.parent and str(inst).startswith(str(cache))
    records = read_instructions(inst)
    assert len(records) == 24
    world = assets.world_of(RunConfig())
    assert all(split_of(src, world) == "train" for src, _ in read_pair_scenes(pairs).values())
    stamp = (inst / "dataset.json").stat().st_mtime_ns
    assert assets.world_dataset(RunConfig()) == (inst, pairs)
    assert (inst / "dataset.json").stat().st_mtime_ns == stamp


def test_pretrain_command_builds_into_a_folder(tmp_path, cache, monkeypatch):
    from harness.toyworld.__main__ import main

    monkeypatch.setattr(assets, "teacher_recipe", lambda: tiny_teacher())
    monkeypatch.setattr(assets, "critic_recipe", lambda size: tiny_critic(size=size))
    assert main(["pretrain", "--out", str(tmp_path / "out"), "--sizes", "small,large", "--jobs", "1"]) == 0
    out = tmp_path / "out"
    assert read_recipe(out / "teacher")["hash"] == recipe_hash(tiny_teacher())
    assert read_recipe(out / "critic-large")["recipe"]["size"] == "large"
    summary = json.loads((out / "recipe.json").read_text())
    assert set(summary["models"]) == {"teacher", "critic-small", "critic-large"}
    assert set(summary["pretrain"]["wall_s"]) == {"teacher", "critic-small", "critic-large"}
    assert len(summary["pretrain"]["runs"]) == 1
    assert summary["pretrain"]["runs"][0]["device"] == "cpu"
    assert read_recipe(out / "teacher")["train"]["device"] == read_recipe(out / "critic-small")["train"]["device"] == "cpu"
    stamp = (out / "teacher" / "recipe.json").stat().st_mtime_ns
    assert main(["pretrain", "--only", "teacher", "--out", str(out), "--jobs", "1"]) == 0  # present: not rebuilt
    assert (out / "teacher" / "recipe.json").stat().st_mtime_ns == stamp


def test_critics_of_a_changed_recipe_use_the_cached_teacher(tmp_path, cache, monkeypatch, capsys):
    """pretrain --only critics --out DIR and evaluate --dir DIR take a teacher whose recipe is
    unchanged from the cache instead of training a copy into DIR; evaluate --only teacher adds its
    numbers to DIR/recipe.json without dropping the critics'."""
    from harness.toyworld.__main__ import main

    teacher = assets.ensure_teacher(tiny_teacher(), progress=False)  # in the cache
    data = C.CriticDataRecipe(p_teacher=0.2, teacher_bank=4, pairs=16, teacher_hash=recipe_hash(tiny_teacher()))
    monkeypatch.setattr(assets, "teacher_recipe", lambda: tiny_teacher())
    monkeypatch.setattr(assets, "critic_recipe", lambda size: tiny_critic(size=size, data=data))
    out = tmp_path / "out"
    sets = ["--set", "critic.steps=3"]
    assert main(["pretrain", "--only", "critics", "--out", str(out), "--sizes", "small", "--jobs", "1", *sets]) == 0
    assert not (out / "teacher").exists() and read_recipe(out / "critic-small")["recipe"]["steps"] == 3
    capsys.readouterr()
    common = ["--dir", str(out), "--sizes", "small", "--captions", "2", "--pairs", "6", *sets]
    assert main(["evaluate", *common]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["teacher"]["folder"] == str(teacher) and report["critics"]["small"]["accuracy"]["all"]["n"] > 0
    summary = json.loads((out / "recipe.json").read_text())
    summary["quality"]["teacher"]["parse_back_of_an_earlier_teacher"] = 0.5
    summary["pretrain"]["note"] = "kept"
    (out / "recipe.json").write_text(json.dumps(summary))
    assert main(["evaluate", "--only", "teacher", *common]) == 0
    assert "critics" not in json.loads(capsys.readouterr().out)
    summary = json.loads((out / "recipe.json").read_text())
    assert set(summary["quality"]) >= {"teacher", "critics"} and "small" in summary["quality"]["critics"]
    assert "parse_back_of_an_earlier_teacher" not in summary["quality"]["teacher"]  # the teacher's block replaced whole
    assert summary["pretrain"]["note"] == "kept"
    assert main(["pretrain", "--only", "critics", "--out", str(out), "--sizes", "small", "--jobs", "1", *sets]) == 0
    summary = json.loads((out / "recipe.json").read_text())
    assert len(summary["pretrain"]["runs"]) == 2 and summary["pretrain"]["note"] == "kept"
    assert not (out / "teacher").exists()


def test_pretrain_and_evaluate_a_changed_recipe(tmp_path, cache, monkeypatch, capsys):
    """--set changes the recipes for pretrain --out and evaluate --dir alike; evaluate never
    retrains over models that another recipe made."""
    from harness.toyworld.__main__ import main

    monkeypatch.setattr(assets, "teacher_recipe", lambda: tiny_teacher())
    monkeypatch.setattr(assets, "critic_recipe", lambda size: tiny_critic(size=size))
    out = tmp_path / "out"
    sets = ["--set", "teacher.pos_spacing=0", "--set", "world.grid=3", "--set", "critic.steps=3"]
    assert main(["pretrain", "--out", str(out), "--sizes", "small", "--jobs", "1", *sets]) == 0
    default_teacher, default_critics = assets.recipes_with(())
    assert recipe_hash(default_teacher) == recipe_hash(tiny_teacher())  # no --set: the current recipes
    assert recipe_hash(default_critics["small"]) == recipe_hash(tiny_critic(size="small"))
    teacher, critics = assets.recipes_with(sets[1::2])
    assert teacher.pos_spacing == 0.0 and teacher.world.grid == 3 and critics["small"].data.world.grid == 3
    assert critics["small"].arch.image_size == 3 * critics["small"].arch.patch_size  # one image token per cell
    assert read_recipe(out / "teacher")["hash"] == recipe_hash(teacher) != recipe_hash(tiny_teacher())
    assert read_recipe(out / "critic-small")["recipe"]["steps"] == 3
    assert json.loads((out / "recipe.json").read_text())["pretrain"]["runs"][0]["set"] == sets[1::2]
    capsys.readouterr()
    assert main(["evaluate", "--dir", str(out), "--sizes", "small", "--captions", "2", "--pairs", "6", *sets]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["set"] == sets[1::2] and report["critics"]["small"]["accuracy"]["all"]["n"] > 0
    stamp = (out / "teacher" / "recipe.json").stat().st_mtime_ns
    with pytest.raises(SystemExit):  # the default recipe's models are not there: refused, nothing retrained
        main(["evaluate", "--dir", str(out), "--sizes", "small", "--captions", "2", "--pairs", "6"])
    assert "give evaluate the --set" in capsys.readouterr().err
    assert (out / "teacher" / "recipe.json").stat().st_mtime_ns == stamp
    for bad, says in ((["--set", "teacher.pos_spacin=2"], "unknown key"), (["--set", "steps=3"], "keys start with")):
        with pytest.raises(SystemExit):
            main(["pretrain", "--out", str(tmp_path / "bad"), *bad])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--set", "teacher.steps=3"])  # not into the cache runs read
    assert "--out DIR" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("device, says", [("tpu9", "--device"), ("cuda", "no CUDA device")])
def test_pretrain_command_refuses_a_device_it_cannot_use(device, says, capsys, cache):
    from harness.toyworld.__main__ import main

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--device", device])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
    assert not cache.exists()  # refused before building anything


def test_evaluate_samples_the_current_teacher_another_way_without_a_folder(cache, monkeypatch, capsys):
    """--set teacher.sample_* only changes how evaluate samples the teacher: no --dir needed, the
    cached model is measured with that sampler (the time shift reaches the Euler grid), and
    nothing is trained; a --set that changes weights still needs --dir."""
    from harness.models.sampler import euler_sample
    from harness.toyworld.__main__ import main

    folder = assets.ensure_teacher(tiny_teacher(), progress=False)
    monkeypatch.setattr(assets, "teacher_recipe", lambda: tiny_teacher())
    monkeypatch.setattr(assets, "critic_recipe", lambda size: tiny_critic(size=size))
    assert not assets.changes_weights(["teacher.sample_shift=5"]) and assets.changes_weights(["teacher.steps=3"])
    seen = []
    real = euler_sample

    def spy(*args, **kw):
        seen.append((kw["steps"], kw["guidance"], kw["shift"], kw["stochastic"]))
        return real(*args, **kw)

    monkeypatch.setattr("harness.models.sampler.euler_sample", spy)
    before = sorted(p.name for p in folder.parent.iterdir())
    capsys.readouterr()
    assert main(["evaluate", "--only", "teacher", "--captions", "2", "--set", "teacher.sample_shift=5",
                 "--set", "teacher.sample_steps=3", "--set", "teacher.sample_guidance=1.5",
                 "--set", "teacher.sample_stochastic=false"]) == 0
    report = json.loads(capsys.readouterr().out)["teacher"]
    assert report["folder"] == str(folder) and report["sampler"] == "euler 3 steps, guidance 1.5, shift 5"
    assert seen and set(seen) == {(3, 1.5, 5.0, False)}
    assert sorted(p.name for p in folder.parent.iterdir()) == before  # nothing trained
    with pytest.raises(SystemExit):
        main(["evaluate", "--only", "teacher", "--set", "teacher.steps=3"])
    assert "--dir DIR" in capsys.readouterr().err
