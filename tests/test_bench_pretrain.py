"""scripts/bench_pretrain.py times each critic phase by training a recipe that starts in it; those
recipes must really train in the phase named, and the per-phase step counts must be the recipe's."""
import importlib.util
from pathlib import Path

import pytest

from harness.toyworld import critics as C

spec = importlib.util.spec_from_file_location("bench_pretrain", Path(__file__).parents[1] / "scripts" / "bench_pretrain.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("size", C.SIZES)
def test_phase_steps_are_the_recipes(size):
    recipe = C.default_critic_recipe(size)
    steps = bench.phase_steps(recipe)
    assert sum(steps.values()) == recipe.steps
    assert [steps[p] for p in C.PHASES[:-1]] == [recipe.probe_steps, recipe.inventory_steps, recipe.describe_steps,
                                                 recipe.changes_steps, recipe.easy_steps]


@pytest.mark.parametrize("phase", C.PHASES)
def test_a_timing_recipe_trains_in_its_phase(phase):
    recipe = bench.in_phase(C.default_critic_recipe("small"), phase, 13)
    assert [C.phase_at(recipe, s) for s in range(13)] == [phase] * 13
