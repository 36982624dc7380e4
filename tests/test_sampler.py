"""Few-step and Euler samplers on denoisers whose right answer is known in closed form."""
from __future__ import annotations

import pytest
import torch

from harness.models.base import TextEmbedding
from harness.models.sampler import euler_sample, few_step_sample, predict_x0, renoise, shift_time, timesteps

TEXT = TextEmbedding(torch.zeros(2, 1, 1), torch.zeros(2, 1))


def oracle(x: torch.Tensor):
    """The exact velocity toward x: from x_t = (1 - t) x + t eps, v = eps - x = (x_t - x) / t."""

    def denoise(x_t, t, text, ref=None):
        return (x_t - x) / t

    return denoise


def test_exact_velocity_recovers_the_target():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    torch.testing.assert_close(few_step_sample(oracle(x), TEXT, None, noise, steps=1), x)
    torch.testing.assert_close(few_step_sample(oracle(x), TEXT, None, noise, steps=4, shift=3.0, generator=g), x)
    torch.testing.assert_close(euler_sample(oracle(x), TEXT, None, noise, steps=7, shift=3.0), x, rtol=1e-5, atol=1e-5)


def test_few_step_times_and_shift():
    assert timesteps(4) == [1.0, 0.75, 0.5, 0.25]
    assert timesteps(1) == [1.0]
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)  # 3 * .5 / (1 + 2 * .5)
    assert timesteps(4, shift=3.0) == pytest.approx([1.0, 0.9, 0.75, 0.5])
    assert shift_time(torch.tensor([0.0, 1.0]), 6.0).tolist() == [0.0, 1.0]
    # the same shift as diffusers' scheduler applies to the same unshifted grid
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=[1 - k / 4 for k in range(4)])
    assert sched.sigmas[:-1].tolist() == pytest.approx(timesteps(4, shift=3.0))
    with pytest.raises(ValueError):
        timesteps(0)


def test_renoise_and_predict_x0_follow_the_flow_convention():
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor([0.25, 0.5, 1.0])
    x_t = renoise(x0, t, eps)
    torch.testing.assert_close(x_t, (1 - t[:, None]) * x0 + t[:, None] * eps)
    v = eps - x0
    torch.testing.assert_close(predict_x0(lambda *a: v, x_t, t, TEXT), x0)


def test_gradient_flows_through_both_steps_of_the_unroll():
    """d loss / d theta of a 2-step unroll (t = 1, then 0.5) equals finite differences: the gradient
    includes the path through the first step's x0, re-noised into the second step's input."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    text = TextEmbedding(TEXT.hidden.double(), TEXT.pooled.double())

    def denoiser(theta):
        return lambda x_t, t, text, ref=None: torch.tanh(x_t @ (w * theta)) * (1 + t)

    def unroll(theta):
        out = few_step_sample(denoiser(theta), text, None, noise, ts=[1.0, 0.5], generator=torch.Generator().manual_seed(7))
        return out.square().sum()

    def second_step_only(theta):  # the first step's output detached
        x0 = predict_x0(denoiser(theta), noise, 1.0, text).detach()
        eps = torch.randn(noise.shape, generator=torch.Generator().manual_seed(7), dtype=noise.dtype)
        return predict_x0(denoiser(theta), renoise(x0, 0.5, eps), 0.5, text).square().sum()

    theta = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    unroll(theta).backward()
    h = 1e-5
    with torch.no_grad():
        fd = (unroll(torch.tensor(0.8 + h, dtype=torch.float64)) - unroll(torch.tensor(0.8 - h, dtype=torch.float64))) / (2 * h)
    assert float(theta.grad) == pytest.approx(float(fd), rel=1e-6)

    partial = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    second_step_only(partial).backward()
    assert abs(float(partial.grad) - float(theta.grad)) > 1e-3 * abs(float(theta.grad))


def test_fresh_noise_comes_from_the_generator():
    noise = torch.randn(1, 4)

    def blurry(x_t, t, text, ref=None):  # predicts x0 = x_t / 2: the output depends on the re-noising
        return x_t / (2 * t)

    text = TEXT[:1]
    a = few_step_sample(blurry, text, None, noise, steps=3, generator=torch.Generator().manual_seed(1))
    b = few_step_sample(blurry, text, None, noise, steps=3, generator=torch.Generator().manual_seed(1))
    c = few_step_sample(blurry, text, None, noise, steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_classifier_free_guidance_combines_branches():
    """A denoiser with constant velocities a (unconditional) and b (conditional) moves the sample by
    exactly -(a + g (b - a)) from t = 1 to 0, batched or not."""
    a, b = torch.full((2, 3), 0.5), torch.full((2, 3), -1.0)
    cond = TextEmbedding(torch.ones(2, 4, 1), torch.ones(2, 1))
    uncond = TextEmbedding(torch.zeros(1, 4, 1), torch.zeros(1, 1))
    calls = []

    def denoise(x_t, t, text, ref=None):
        calls.append(x_t.shape[0])
        is_cond = text.pooled[:, :1]
        return a.repeat(x_t.shape[0] // 2, 1) * (1 - is_cond) + b.repeat(x_t.shape[0] // 2, 1) * is_cond

    noise = torch.randn(2, 3)
    out = euler_sample(denoise, cond, None, noise, steps=4, guidance=3.0, uncond_text=uncond)
    torch.testing.assert_close(out, noise - (a + 3.0 * (b - a)))
    assert calls == [4] * 4  # both branches in one batched call per step
    out1 = euler_sample(denoise, cond, None, noise, steps=4, guidance=1.0)
    torch.testing.assert_close(out1, noise - b)
    with pytest.raises(ValueError, match="uncond_text"):
        euler_sample(denoise, cond, None, noise, guidance=2.0)
