"""Time and memory of one NP-Edit training iteration, part by part, against a plain flow-matching
iteration of the same backbone (a benchmark script, not a test).

    python scripts/bench_np_edit.py                                   # the built-in world's toy preset
    python scripts/bench_np_edit.py configs/toy/np_edit.yaml data.batch_size=8 --iters 5
    python scripts/bench_np_edit.py my_sd3_run.yaml --device cuda     # any run config

Parts: unroll (the 2-step generator unroll, forward), decode, vlm_loss (critic forward), dmd
(teacher + auxiliary forward), backward_and_step (one backward through everything + Adam),
aux_updates (n_aux auxiliary model updates, each with a no-grad generator unroll).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import config as C  # noqa: E402
from harness.profiling import peak_rss_bytes  # noqa: E402
from harness.runstore import RunDir  # noqa: E402
from harness.train import resolve_device, seed_everything  # noqa: E402
from methods.dmd import flow_loss  # noqa: E402
from methods.np_edit import NPEdit  # noqa: E402


def flow_matching_iteration(m: NPEdit, step: int) -> None:
    """The plain baseline: one flow-matching step of the generator on a batch (reference-conditioned)."""
    batch = m._batch(step, "bench")
    g = m._gen(step, "bench")
    with torch.no_grad():
        y = m.backbone.encode_image(batch.images.to(m.device))
        text = m.backbone.encode_text([r.instruction for r in batch.records])
    t = torch.rand(y.shape[0], generator=g).to(m.device)
    loss = flow_loss(m.G, y, t, m._randn(y.shape, g), text, ref=y)
    m._step_G(loss)


def timed(fn, iters: int) -> list[float]:
    out = []
    for i in range(iters):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(REPO / "configs" / "toy" / "np_edit.yaml"))
    p.add_argument("overrides", nargs="*")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    p.add_argument("--single-step", action="store_true", help="time the single-step phase instead of the 2-step unroll")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, one per core)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    phase = ["method.warmup_steps=0", f"method.single_step_steps={10**9 if args.single_step else 0}"]
    cfg = C.load_run_config(args.config, [*args.overrides, *phase, f"train.device={args.device}"])
    seed_everything(cfg.seed, deterministic=False)
    device = resolve_device(cfg.train.device)
    with tempfile.TemporaryDirectory() as tmp:
        m = NPEdit(cfg, RunDir(tmp), device)
        for i in range(args.warmup):
            m.train_step(i)
        m.prof.enabled = True
        total = timed(lambda i: m.train_step(args.warmup + i), args.iters)
        m.prof.enabled = False
        parts = {k: statistics.mean(v) for k, v in m.prof.seconds.items()}
        peaks = dict(m.prof.cuda_peak_bytes)
        for i in range(args.warmup):
            flow_matching_iteration(m, 10_000 + i)
        base = timed(lambda i: flow_matching_iteration(m, 20_000 + i), args.iters)

    it, fm = statistics.mean(total), statistics.mean(base)
    bs = cfg.data.batch_size
    print(f"# {cfg.method.name} on {cfg.model.backbone.name} + {getattr(cfg.model.critic, 'name', None)}, "
          f"batch {bs}, {'single step' if args.single_step else '2-step unroll'}, n_aux {cfg.method.n_aux}")
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# device: {dev}; torch {torch.__version__}; {args.iters} timed iterations after {args.warmup} warmup")
    print(f"{'part':<20}{'seconds':>10}{'share':>8}{'cuda peak GiB':>15}")
    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        peak = f"{peaks[k] / 2**30:.2f}" if k in peaks else "-"
        print(f"{k:<20}{v:>10.4f}{v / it:>8.1%}{peak:>15}")
    print(f"{'iteration':<20}{it:>10.4f}{'':>8}")
    print(f"{'per sample':<20}{it / bs:>10.4f}")
    print(f"{'flow-matching iter':<20}{fm:>10.4f}")
    print(f"ratio NP-Edit / flow-matching iteration: {it / fm:.1f}x")
    print(f"peak RSS: {peak_rss_bytes() / 2**30:.2f} GiB"
          + (f"; peak CUDA: {max(peaks.values()) / 2**30:.2f} GiB" if peaks else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
