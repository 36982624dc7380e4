"""The built-in world's assets: its pretrained teacher and critics, its training datasets, and the
registry entries that let run configs name them (`backbone: toy_mmdit`, `critic: {name: toy_llava, size: large}`).

Every model is identified by the hash of its recipe (harness.toyworld.teacher.TeacherRecipe,
harness.toyworld.critics.CriticRecipe). `ensure_teacher()` / `ensure_critic(size)` return, in order:

1. the copy shipped in the package (harness/toyworld/pretrained/<name>/), when its recipe.json
   has the current recipe's hash;
2. the cached copy `$NPEDIT_CACHE/toyworld/<name>-<hash>/` (default cache ~/.cache/np-edit);
3. otherwise they pretrain it into the cache first (minutes on a laptop CPU; one process at a
   time, others wait for it under a file lock).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from harness.models.sd3 import SD3Backbone, SD3Config
from harness.registry import BACKBONES, CRITICS, Spec
from harness.toyworld.scenes import WorldConfig

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
TEACHER = "teacher"

# The world's training datasets (NP-Edit instructions, SFT pairs): training-split scenes only.
DATASET_REFS = 3000
DATASET_EDITS_PER_REF = 2
DATASET_SEED = 0


def cache_root() -> Path:
    return Path(os.environ.get("NPEDIT_CACHE") or "~/.cache/np-edit").expanduser()


def critic_name(size: str) -> str:
    return f"critic-{size}"


# ---------------------------------------------------------------------------------------------
# Current recipes


def teacher_recipe(world: Any = None) -> Any:
    """The built-in teacher's recipe for `world` (default: the default world)."""
    from harness.toyworld.teacher import TeacherRecipe

    return TeacherRecipe() if world is None else TeacherRecipe(world=world)


def critic_recipe(size: str, world: Any = None) -> Any:
    """The built-in critic's recipe of this size for `world` (default: the default world)."""
    from harness.toyworld.critics import SIZES, default_critic_recipe
    from harness.toyworld.pretrain import recipe_hash

    if size not in SIZES:
        raise ValueError(f"critic size {size!r} is not built in; sizes: {', '.join(SIZES)}")
    return default_critic_recipe(size, teacher_hash=recipe_hash(teacher_recipe(world)), world=world)


SET_PREFIXES = ("teacher.", "critic.", "world.")


def recipes_with(overrides: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """The teacher recipe and every critic size's recipe with `--set` overrides applied:
    'teacher.KEY=VALUE', 'critic.KEY=VALUE' (every size) and 'world.KEY=VALUE' (the world of both),
    KEY dotted into the recipe dataclasses (harness/toyworld/{teacher,critics}.py). A changed grid
    resizes the critics' images to keep one image token per cell, unless critic.arch.image_size is
    set too. Unknown keys and bad values fail here, before any work."""
    from harness.config import ConfigError, from_dict, parse_override, resolve_dict, to_dict
    from harness.toyworld.critics import SIZES, CriticRecipe
    from harness.toyworld.pretrain import recipe_hash
    from harness.toyworld.teacher import TeacherRecipe

    split: dict[str, dict[str, Any]] = {"teacher": {}, "critic": {}}
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith(SET_PREFIXES):
            raise ConfigError(f"--set {text!r}: keys start with one of {', '.join(SET_PREFIXES)} "
                              "(e.g. teacher.pos_spacing=2, critic.steps=3000, world.grid=2)")
        head, rest = key.split(".", 1)
        if head == "world":
            split["teacher"][f"world.{rest}"] = value
            split["critic"][f"data.world.{rest}"] = value
        else:
            split[head][rest] = value

    def build(cls: type, base: Any, sets: dict[str, Any], label: str) -> Any:
        data, keys = resolve_dict(to_dict(base), sets, label)
        recipe = from_dict(cls, data, label, keys)
        try:
            recipe.validate()
        except ValueError as e:
            raise ConfigError(f"{label}: {e}") from None
        return recipe

    teacher = build(TeacherRecipe, teacher_recipe(), split["teacher"], "--set (teacher recipe)")
    critics = {}
    for size in SIZES:
        base, sets = critic_recipe(size), dict(split["critic"])
        if "data.world.grid" in sets and "arch.image_size" not in sets:  # one image token per grid cell
            sets["arch.image_size"] = base.arch.patch_size * int(sets["data.world.grid"])
        r = build(CriticRecipe, base, sets, f"--set (critic {size} recipe)")
        if r.data.p_teacher > 0:  # its examples include samples of this teacher
            r = replace(r, data=replace(r.data, teacher_hash=recipe_hash(teacher)))
        critics[size] = r
    return teacher, critics


def changes_weights(overrides: Sequence[str]) -> bool:
    """Whether `--set` overrides change what any model is trained from (its recipe hash), rather
    than only how it is measured (say teacher.sample_shift)."""
    from harness.toyworld.pretrain import recipe_hash

    (t0, c0), (t1, c1) = recipes_with(()), recipes_with(overrides)
    return recipe_hash(t0) != recipe_hash(t1) or any(recipe_hash(c0[k]) != recipe_hash(c1[k]) for k in c0)


# ---------------------------------------------------------------------------------------------
# Lookup


def _complete(folder: Path, hash_: str) -> bool:
    from harness.toyworld.pretrain import read_recipe

    info = read_recipe(folder)
    return info is not None and info.get("hash") == hash_


def locate(name: str, recipe: Any, *, root: Path | None = None) -> Path | None:
    """The folder holding model `name` made by `recipe`: in `root` when given, else shipped, else cached."""
    from harness.toyworld.pretrain import recipe_hash

    return locate_hash(name, recipe_hash(recipe), root=root)


def locate_hash(name: str, h: str, *, root: Path | None = None) -> Path | None:
    """The same, for the recipe of hash `h`."""
    candidates = [Path(root) / name] if root is not None else [PRETRAINED / name, cache_root() / "toyworld" / f"{name}-{h}"]
    return next((c for c in candidates if _complete(c, h)), None)


def target_folder(name: str, recipe: Any, root: Path | None = None) -> Path:
    from harness.toyworld.pretrain import recipe_hash

    return Path(root) / name if root is not None else cache_root() / "toyworld" / f"{name}-{recipe_hash(recipe)}"


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One process builds a folder at a time; the others wait and then find it built."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f".{folder.name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _announce(name: str, recipe: Any, folder: Path) -> None:
    from harness.toyworld.pretrain import log, read_recipe, recipe_hash

    shipped = read_recipe(PRETRAINED / name)
    took = (shipped or {}).get("train", {}).get("seconds")
    rough = f"the shipped one took {max(1, round(took / 60))} min" if took else "no time measured yet"
    why = (f"the shipped one was made by recipe {shipped['hash']}" if shipped else "none is shipped")
    log(f"{name}: no pretrained copy of recipe {recipe_hash(recipe)} ({why}); pretraining it now into {folder} "
        f"({rough} on 2 CPU cores; cached for every later run)")


def ensure_teacher(recipe: Any = None, *, root: Path | None = None, force: bool = False, progress: bool = True,
                   device: Any = None) -> Path:
    """The pretrained teacher's SD3 folder (built on first use, on `device`). `root`: build/look only
    there (e.g. the package's pretrained/ folder when shipping); `force`: rebuild even if present."""
    from harness.toyworld.teacher import train_teacher

    recipe = recipe or teacher_recipe()
    return _ensure(TEACHER, recipe, root, force, lambda folder: train_teacher(recipe, folder, progress=progress, device=device))


def _ensure(name: str, recipe: Any, root: Path | None, force: bool, build: Any) -> Path:
    """The folder of model `name` for `recipe`: found, or built by `build(folder)` under a file lock
    (a process that waited on the lock finds what the other one built)."""
    if not force and (found := locate(name, recipe, root=root)) is not None:
        return found
    folder = target_folder(name, recipe, root)
    with _lock(folder):
        if not force and (found := locate(name, recipe, root=root)) is not None:
            return found
        _announce(name, recipe, folder)
        build(folder)
    return folder


def _pool_path(data: Any, part: str) -> Path:
    from harness.toyworld.pretrain import recipe_hash

    suffix = "" if part == "all" else f"-{part}"
    return cache_root() / "toyworld" / f"critic-data-{recipe_hash(data)}{suffix}.npz"


def critic_pool(recipe: Any, *, root: Path | None = None, part: str = "all", progress: bool = True,
                teacher_recipe_: Any = None) -> Any:
    """The critics' shared training examples (cached under the data recipe's hash). part='base':
    only the examples without teacher samples (they need no teacher, so they can be built while
    it trains); 'all' adds the teacher-sample examples to them (drawn by the teacher of
    `teacher_recipe_`, default the current one)."""
    from harness.toyworld import critics as C
    from harness.toyworld.pretrain import log, read_recipe

    data = recipe.data
    path = _pool_path(data, part)
    if path.exists():
        return C.Pool.load(path)
    with _lock(path):
        if path.exists():
            return C.Pool.load(path)
        if part == "base" or data.p_teacher <= 0:
            log(f"critic data: answered (reference, candidate) pairs without teacher samples -> {path}")
            pool = C.build_pool(data, data.pairs, part="base", progress=progress)
        else:
            base = critic_pool(recipe, root=root, part="base", progress=progress)
            t_recipe = teacher_recipe_ or teacher_recipe()
            # a teacher of this recipe that is already shipped or cached is the same model: use it
            # rather than train a copy into `root` (pretrain --only critics --out DIR)
            teacher = (locate(TEACHER, t_recipe, root=root) if root is not None else None) \
                or locate(TEACHER, t_recipe) or ensure_teacher(t_recipe, root=root, progress=progress)
            made_by = (read_recipe(teacher) or {}).get("hash")
            if made_by != data.teacher_hash:
                raise ValueError(f"critic data recipe wants samples of teacher {data.teacher_hash!r}, but the teacher "
                                 f"at {teacher} is {made_by!r}; set data.teacher_hash to it or data.p_teacher to 0")
            log(f"critic data: {data.teacher_bank} teacher samples and their pairs -> {path}")
            bank = C.teacher_bank(teacher, data, data.teacher_bank, split="train", seed=0)
            pool = C.Pool.concat([base, C.build_pool(data, data.pairs, bank=bank, part="teacher", progress=progress)])
        path.parent.mkdir(parents=True, exist_ok=True)
        pool.save(path)
    return pool


def ensure_critic(size: str = "large", recipe: Any = None, *, root: Path | None = None, force: bool = False,
                  progress: bool = True, device: Any = None, teacher_recipe_: Any = None) -> Path:
    """The pretrained critic's LLaVA folder of this size (built on first use, on `device`).
    `teacher_recipe_`: the teacher whose samples its examples may include (default the current one)."""
    from harness.toyworld.critics import train_critic

    recipe = recipe or critic_recipe(size)
    return _ensure(critic_name(recipe.size), recipe, root, force,
                   lambda folder: train_critic(recipe, folder, critic_pool(recipe, root=root, progress=progress,
                                                                           teacher_recipe_=teacher_recipe_),
                                               progress=progress, device=device))


# ---------------------------------------------------------------------------------------------
# Datasets


def world_of(cfg: Any) -> Any:
    """The world a run trains in: that of its shapes_edit benchmark (it must match the model's), else the default."""
    from harness.toyworld.scenes import WorldConfig

    for bench in getattr(getattr(cfg, "eval", None), "benchmarks", None) or []:
        if getattr(bench, "name", "") == "shapes_edit":
            return bench.world
    return WorldConfig()


def world_dataset(cfg: Any = None) -> tuple[Path, Path]:
    """(instructions_dir, pairs_dir): the world's NP-Edit instruction dataset and SFT paired dataset
    (training-split scenes only), exported once into the cache and reused."""
    from harness.toyworld.dataset import build_world_datasets, dataset_name, export_params

    world = world_of(cfg)
    world.validate()
    params = export_params(world, DATASET_REFS, DATASET_SEED, DATASET_EDITS_PER_REF)
    root = cache_root() / "toyworld" / "datasets" / dataset_name(params)
    with _lock(root):
        return build_world_datasets(root, world, DATASET_REFS, DATASET_SEED, DATASET_EDITS_PER_REF)


# ---------------------------------------------------------------------------------------------
# Registry entries


def _world_field() -> Any:
    # the world the built-in model is pretrained on; a run fills it in from its shapes_edit
    # benchmark (resolve_builtin), whose world is in the run id already
    return field(default_factory=WorldConfig, metadata={"hash": False})


_RECIPE_HELP = ("hash of the built-in model's recipe; '' = the current one for the world, filled in when "
                "the run's config is read, so a run names the exact model it used and a new model means a new run")


@dataclass
class ToyMMDiTConfig(SD3Config):
    """SD3Config of the built-in teacher of `world` (`path: ''`), or of any other SD3 folder."""

    name: str = "toy_mmdit"
    ref_modulation: Literal["shared", "clean"] = "clean"
    shift: float = 1.0
    world: WorldConfig = _world_field()
    recipe: str = field(default="", metadata={"help": _RECIPE_HELP})


@dataclass
class ToyLlavaConfig:
    name: str = "toy_llava"
    size: Literal["small", "medium", "large"] = "large"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    grad_checkpointing: bool = False
    world: WorldConfig = _world_field()
    recipe: str = field(default="", metadata={"help": _RECIPE_HELP})


def _builtin(section: Any) -> tuple[str, Any]:
    """(model folder name, current recipe) of a toy section's built-in model."""
    if isinstance(section, ToyLlavaConfig):
        return critic_name(section.size), critic_recipe(section.size, section.world)
    return TEACHER, teacher_recipe(section.world)


def resolve_builtin(section: Any, run: Any) -> Any:
    """A built-in model section as run `run` needs it: of the run's world (that of its shapes_edit
    benchmark; a section left at the default world takes it, one set to another world is an error,
    since the model would not know the benchmark's scenes and words), and pinned to the current
    recipe's hash unless it names one already."""
    from harness.toyworld.pretrain import recipe_hash

    world = world_of(run)
    if section.world != world:
        if section.world != WorldConfig():
            mine, theirs = asdict(section.world), asdict(world)
            differ = ", ".join(sorted(k for k in mine if mine[k] != theirs[k]))
            raise ValueError(f"{section.name}'s world differs from the run's shapes_edit world in {differ}; set the "
                             f"world once, in the shapes_edit benchmark of eval.benchmarks, and the built-in models "
                             f"follow it")
        section = replace(section, world=world)
    if not section.recipe and not getattr(section, "path", ""):
        section = replace(section, recipe=recipe_hash(_builtin(section)[1]))
    return section


def builtin_folder(section: Any, *, progress: bool = True) -> Path:
    """The folder of the built-in model a toy section names: that of the current recipe (pretrained
    on first use), or the shipped or cached model of an earlier recipe the section was pinned to."""
    from harness.toyworld.pretrain import recipe_hash

    name, recipe = _builtin(section)
    if not section.recipe or section.recipe == recipe_hash(recipe):
        if name == TEACHER:
            return ensure_teacher(recipe, progress=progress)
        return ensure_critic(section.size, recipe, progress=progress, teacher_recipe_=teacher_recipe(section.world))
    found = locate_hash(name, section.recipe)
    if found is not None:
        return found
    raise ValueError(f"{section.name}: recipe {section.recipe!r}: no {name} of that recipe is shipped or in "
                     f"{cache_root() / 'toyworld'}; the current recipe is {recipe_hash(recipe)} (remove the recipe "
                     f"key for it, as a new run; or put the old model's folder there as {name}-{section.recipe})")


def build_toy_backbone(cfg: Any, device: Any = None) -> Any:
    """An SD3Backbone over the built-in teacher (`path: ''`) or any other SD3 folder."""
    path = cfg.path or str(builtin_folder(cfg))
    plain = {f.name: getattr(cfg, f.name) for f in fields(SD3Config)}
    return SD3Backbone(SD3Config(**{**plain, "path": path}), device=device)


def build_toy_critic(cfg: ToyLlavaConfig, device: Any = None) -> Any:
    """The built-in critic of this size, loaded by harness.models.llava like any LLaVA critic."""
    from harness.models.llava import LlavaCriticConfig, load_llava_critic

    return load_llava_critic(LlavaCriticConfig(path=str(builtin_folder(cfg)), dtype=cfg.dtype,
                                               grad_checkpointing=cfg.grad_checkpointing), device)


def _register() -> None:
    BACKBONES.register("toy_mmdit", Spec(
        ToyMMDiTConfig, build=build_toy_backbone, resolve=resolve_builtin,
        help="built-in world: tiny pixel-space SD3 MMDiT pretrained by the harness on the run's world "
             "(path '' = the built-in one)"))
    CRITICS.register("toy_llava", Spec(ToyLlavaConfig, build=build_toy_critic, resolve=resolve_builtin,
                                       help="built-in world: tiny LLaVA (SigLIP + Qwen2) critic pretrained on the "
                                            "run's world, sizes small/medium/large"))


_register()

__all__ = ["PRETRAINED", "ToyLlavaConfig", "ToyMMDiTConfig", "builtin_folder", "resolve_builtin", "build_toy_backbone", "build_toy_critic", "cache_root", "critic_pool",
           "critic_recipe", "ensure_critic", "ensure_teacher", "locate", "locate_hash", "recipes_with", "teacher_recipe", "world_dataset", "world_of"]
