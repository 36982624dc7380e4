import subprocess
import sys

import pytest
import yaml

from harness import config as C
from harness.runconfig import RunConfig
from tests.helpers import FIT_BASE, write_yaml


@pytest.fixture
def fit_yaml(tmp_path):
    return write_yaml(tmp_path / "run.yaml", FIT_BASE)


def test_round_trip_yaml_config_yaml(fit_yaml, tmp_path):
    cfg = C.load_run_config(fit_yaml)
    text = C.dump_yaml(cfg)
    again = C.load_run_config(write_yaml(tmp_path / "again.yaml", yaml.safe_load(text)))
    assert again == cfg
    assert C.dump_yaml(again) == text
    assert C.config_hash(again) == C.config_hash(cfg)


def test_overrides_apply_and_coerce(fit_yaml):
    cfg = C.load_run_config(fit_yaml, ["train.steps=200", "method.lr=2e-6", "train.betas=[0.5, 0.9]", "data.edit_types=[color]"])
    assert cfg.train.steps == 200
    assert cfg.method.lr == pytest.approx(2e-6) and isinstance(cfg.method.lr, float)
    assert cfg.train.betas == [0.5, 0.9]
    assert cfg.data.edit_types == ["color"]


def test_overrides_leave_the_callers_values_unchanged(fit_yaml):
    # a tune variant's `set: {method: {...}}` with a searched `method.lr`: the second key must not write
    # into the variant's dict, or every later trial (and --emit) would carry the previous trial's value
    method = {"name": "fit_fast"}
    overrides = {"method": method, "method.lr": 0.3}
    first = C.load_run_config(fit_yaml, overrides)
    assert first.method.lr == 0.3
    assert method == {"name": "fit_fast"}
    assert C.load_run_config(fit_yaml, {"method": method}).method.lr == 0.2


def test_variant_defaults_come_from_the_registry(fit_yaml):
    base = C.load_run_config(fit_yaml)
    fast = C.load_run_config(fit_yaml, ["method.name=fit_fast"])
    assert base.method.lr == 0.05 and fast.method.lr == 0.2
    explicit = C.load_run_config(fit_yaml, ["method.name=fit_fast", "method.lr=0.3"])
    assert explicit.method.lr == 0.3


def test_hash_ignores_keys_that_do_not_change_results(fit_yaml):
    a = C.load_run_config(fit_yaml)
    b = C.load_run_config(fit_yaml, ["train.log_every=7", "train.ckpt_every=3", "data.num_workers=4", "name=x"])
    c = C.load_run_config(fit_yaml, ["train.steps=21"])
    assert C.config_hash(a) == C.config_hash(b)
    assert C.config_hash(a) != C.config_hash(c)


def test_an_option_added_later_keeps_old_hashes_at_its_default():
    from dataclasses import dataclass, field

    @dataclass
    class Before:
        steps: int = 10

    @dataclass
    class After:
        steps: int = 10
        spacing: float = field(default=0.0, metadata={"hash": "unless_default"})

    assert C.config_hash(After()) == C.config_hash(Before())
    assert C.config_hash(After(spacing=2.0)) != C.config_hash(Before())
    assert C.to_dict(After()) == {"steps": 10, "spacing": 0.0}  # still written out in full

    @dataclass
    class AfterWithFactory:
        steps: int = 10
        sizes: list = field(default_factory=lambda: [1, 2], metadata={"hash": "unless_default"})

    assert C.config_hash(AfterWithFactory()) == C.config_hash(Before())
    assert C.config_hash(AfterWithFactory(sizes=[3])) != C.config_hash(Before())


def test_hash_is_stable_across_processes(fit_yaml):
    code = ("import sys; from harness import config as C; "
            f"print(C.config_hash(C.load_run_config({str(fit_yaml)!r}, ['method.lr=0.1'])))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    assert outs == {C.config_hash(C.load_run_config(fit_yaml, ["method.lr=0.1"]))}


@pytest.mark.parametrize("override, expected", [
    ("method.lrr=0.1", ["command-line override", "method.lrr", "unknown key", "lr,"]),
    ("train.steps=abc", ["command-line override", "train.steps", "expected an integer"]),
    ("method.name=nope", ["command-line override", "method.name", "unknown method 'nope'", "fit, fit_fast"]),
    ("train.deterministic=maybe", ["train.deterministic", "expected true or false"]),
    ("data.fraction=0", ["command-line override: key 'data.fraction'", "got 0.0", "allowed: a number > 0 and <= 1"]),
    ("trainsteps", ["expected key=value"]),
])
def test_bad_overrides_name_key_and_allowed(fit_yaml, override, expected):
    with pytest.raises(C.ConfigError) as e:
        C.load_run_config(fit_yaml, [override])
    for part in expected:
        assert part in str(e.value)


def test_bad_file_keys_name_the_file(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {**FIT_BASE, "train": {"stepz": 3}})
    line = bad.read_text().splitlines().index("  stepz: 3") + 1
    with pytest.raises(C.ConfigError, match=rf"bad\.yaml:{line}: key 'train\.stepz': unknown key; allowed keys here: .*steps"):
        C.load_run_config(bad)
    wrong_type = write_yaml(tmp_path / "wt.yaml", {**FIT_BASE, "train": {"betas": 0.9}})
    with pytest.raises(C.ConfigError, match=r"wt\.yaml:\d+: key 'train\.betas': expected a list"):
        C.load_run_config(wrong_type)
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(C.ConfigError, match="broken.yaml: not valid YAML"):
        C.load_run_config(tmp_path / "broken.yaml")
    with pytest.raises(C.ConfigError, match="missing.yaml: file not found"):
        C.load_run_config(tmp_path / "missing.yaml")


def test_unknown_plugin_module_is_reported(tmp_path):
    bad = write_yaml(tmp_path / "p.yaml", {**FIT_BASE, "plugins": ["no_such_module_xyz"]})
    with pytest.raises(KeyError, match="no_such_module_xyz"):
        C.load_run_config(bad)


def test_flatten_gives_dotted_columns(fit_yaml):
    flat = C.flatten(C.to_dict(C.load_run_config(fit_yaml)))
    assert flat["method.name"] == "fit"
    assert flat["train.steps"] == 20
    assert flat["eval.benchmarks[0].name"] == "fit_eval"


def test_defaults_describe_a_full_run():
    rows = {r[0]: r for r in C.describe(RunConfig)}
    assert {"method", "model", "data", "train", "eval", "seed"} <= set(rows)


def test_include_merges_fragments_under_the_file(tmp_path):
    write_yaml(tmp_path / "models" / "m.yaml", {"method": {"name": "fit", "dim": 7, "lr": 0.3}, "train": {"steps": 9}})
    write_yaml(tmp_path / "opt.yaml", {"train": {"steps": 11, "lr": 0.5}})
    run = write_yaml(tmp_path / "run.yaml", {**FIT_BASE, "include": ["models/m.yaml", "opt.yaml"],
                                            "method": {"name": "fit", "dim": 2}})
    cfg = C.load_run_config(run)
    assert cfg.method.dim == 2 and cfg.method.lr == 0.3  # the file wins, included keys fill in
    assert cfg.train.steps == 20 and cfg.train.lr == 0.5  # FIT_BASE sets steps; opt.yaml (later) sets lr
    write_yaml(tmp_path / "loop.yaml", {"include": ["loop.yaml"]})
    with pytest.raises(C.ConfigError, match="include cycle"):
        C.load_run_config(tmp_path / "loop.yaml")
    write_yaml(tmp_path / "bad.yaml", {"include": ["nope.yaml"]})
    with pytest.raises(C.ConfigError, match="include': file not found"):
        C.load_run_config(tmp_path / "bad.yaml")
