"""The planner (harness.plan) against measurement, on CPU: peak memory and FLOPs of one training step
as planned (traced on fake tensors) and as measured when the same step really runs.

    python scripts/check_plan.py                       # every case, one subprocess each
    python scripts/check_plan.py --cases toy sd3.5m+ov0.5b --workdir /tmp/check_plan

Cases: the built-in world's NP-Edit preset, and real-width, reduced-depth models at 256 px: every
dimension of the real model (widths, heads, joint attention sizes, vocabularies, image processors and
their tile counts) but 2 transformer blocks (FLUX: one double- and one single-stream block), one layer
per text encoder, 2 LM and 2 vision layers per critic; bf16, LoRA rank 32 on G and A (so that G, A and
the teacher fit a few GiB), batch 1, one auxiliary update. Folders are written once into --workdir.

Measured in one run of the step: FLOPs with torch.utils.flop_counter (plus CPU flash attention,
harness.plan.flop_counter); peak memory from the CPU allocator's events (torch.profiler,
profile_memory), counted from before the models are loaded: every byte allocated and not yet freed at
the step's peak.
Both runs start from the planner's steady state (gradients and Adam states exist). Prints a table of
plan / measured ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GiB = 1024**3
REAL = {  # short name -> (registry name, hub id whose architecture is kept in configs/models/json)
    "sd3.5m": ("sd3", "stabilityai/stable-diffusion-3.5-medium"),
    "flux": ("flux", "black-forest-labs/FLUX.1-dev"),
    "ov0.5b": ("llava_onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
    "internvl1b": ("internvl", "OpenGVLab/InternVL3-1B-hf"),
    "qwen3b": ("qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct"),
}
NP_EDIT = {"name": "np_edit", "warmup_steps": 0, "single_step_steps": 0, "n_aux": 1, "guidance": 3.5, "noop_prob": 0.0}
CASES = {  # name -> (backbone, critic, method); None = the toy preset
    "toy": None,
    "sd3.5m+ov0.5b": ("sd3.5m", "ov0.5b", NP_EDIT),
    # the VLM-only variant (G and the critic: no teacher, A or auxiliary updates): FLUX's G, A and teacher would
    # not fit the few GiB these checks keep to, and the critics' checks cost a third as much without them
    "sd3.5m+qwen3b": ("sd3.5m", "qwen3b", {**NP_EDIT, "name": "vlm_only"}),
    "flux+internvl1b": ("flux", "internvl1b", {**NP_EDIT, "name": "vlm_only"}),
}
RESOLUTION = 256


def vocabulary() -> list[str]:
    from harness.plan import critic_vocabulary

    return critic_vocabulary() + ["do nothing", "keep the image unchanged", "leave the image as it is", "a dog on a sofa",
                                  "next to a red car"]


def folder(workdir: Path, short: str) -> Path:
    """The reduced-depth folder of a real model (written on first use)."""
    import torch

    from harness.models import archs

    name, hub = REAL[short]
    out = workdir / short
    if (out / ("model_index.json" if name in ("sd3", "flux") else "config.json")).exists():
        return out
    if name in ("sd3", "flux"):
        return archs.write_reduced_pipeline(archs.pipeline_arch(hub), out, blocks=2, vocab=vocabulary(), dtype=torch.bfloat16)
    return archs.write_reduced_vlm(name, archs.vlm_arch(hub), out, layers=2, vision_layers=2, vocab=vocabulary(),
                                   dtype=torch.bfloat16)


def case_config(case: str, workdir: Path):
    from harness import config as C

    if CASES[case] is None:
        return C.load_run_config(REPO / "configs" / "toy" / "np_edit.yaml", ["data.batch_size=4"])
    bb, critic, method = CASES[case]
    return C.load_run_config(None, data={
        "method": method,
        "model": {"backbone": {"name": REAL[bb][0], "path": str(folder(workdir, bb)), "resolution": RESOLUTION,
                               "dtype": "bfloat16", "trainable_dtype": "float32", "grad_checkpointing": True,
                               "lora_rank": 32, "lora_alpha": 64.0, **({"max_sequence_length": 512} if bb == "flux" else {})},
                  "critic": {"name": REAL[critic][0], "path": str(folder(workdir, critic)), "dtype": "bfloat16",
                             "grad_checkpointing": True}},
        "data": {"path": "unused", "paired_path": "unused", "batch_size": 1},
        "train": {"steps": 10, "lr": 1e-5},
        "eval": {"benchmarks": []},
    }, source=f"check_plan case {case}")


def allocated_peak(prof, start_ns: int, end_ns: int) -> tuple[int, int]:
    """(bytes allocated at `start_ns`, peak bytes within [start_ns, end_ns]) from the CPU allocator's events."""
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"),
                    key=lambda e: e.start_ns())
    cur, base, peak = 0, None, 0
    for e in events:
        if e.start_ns() >= start_ns and base is None:
            base = peak = cur
        cur += e.nbytes()
        if base is not None and e.start_ns() <= end_ns:
            peak = max(peak, cur)
    return (base if base is not None else cur), peak


def run_case(case: str, workdir: Path) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from harness import plan as P
    from harness.registry import BACKBONES, CRITICS

    torch.manual_seed(0)
    cfg = case_config(case, workdir)
    t0 = time.perf_counter()
    trace = P.trace_step(cfg)
    plan_s = time.perf_counter() - t0

    cpu = torch.device("cpu")
    counter = P.flop_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        m = P.build_method(cfg, lambda s: BACKBONES.get(s.name).build(s, cpu), lambda s: CRITICS.get(s.name).build(s, cpu), cpu)
        P.prepare_steady_state(m)
        with record_function("check_plan_step"), counter:
            t0 = time.perf_counter()
            metrics = m.train_step(trace.step)
            step_s = time.perf_counter() - t0
    mark = next(e for e in prof.profiler.kineto_results.events() if e.name() == "check_plan_step")
    base, peak = allocated_peak(prof, mark.start_ns(), mark.end_ns())
    return {"case": case, "plan_peak": trace.peak, "measured_peak": peak, "measured_start": base,
            "plan_static": sum(trace.static.values()), "plan_flops": trace.total_flops,
            "measured_flops": counter.get_total_flops(), "plan_seconds": plan_s, "step_seconds": step_s,
            "phase": trace.phase, "loss": metrics.get("loss")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--workdir", default="", help="where the reduced-depth model folders are written (default: a temporary folder)")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="check_plan-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_case(args.one, workdir)))
        return 0
    rows = []
    for case in args.cases:  # one process per case: each measurement starts from an empty allocator
        out = subprocess.run([sys.executable, __file__, "--one", case, "--workdir", str(workdir)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
        if out.returncode:
            print(f"{case}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{case}: plan {r['plan_peak'] / GiB:.3f} GiB / measured {r['measured_peak'] / GiB:.3f} GiB; "
              f"FLOPs {r['plan_flops']:.4g} / {r['measured_flops']:.4g}", flush=True)
    print(f"\n# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; workdir {workdir}")
    print(f"{'case':<20}{'phase':<28}{'plan GiB':>10}{'measured':>10}{'ratio':>8}{'plan FLOPs':>13}{'measured':>13}{'ratio':>8}"
          f"{'plan s':>8}{'step s':>8}")
    for r in rows:
        print(f"{r['case']:<20}{r['phase']:<28}{r['plan_peak'] / GiB:>10.3f}{r['measured_peak'] / GiB:>10.3f}"
              f"{r['plan_peak'] / r['measured_peak']:>8.3f}{r['plan_flops']:>13.4g}{r['measured_flops']:>13.4g}"
              f"{r['plan_flops'] / max(r['measured_flops'], 1):>8.4f}{r['plan_seconds']:>8.1f}{r['step_seconds']:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if len(rows) == len(args.cases) else 1


if __name__ == "__main__":
    sys.exit(main())
