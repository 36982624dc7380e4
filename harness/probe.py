"""Force balance of NP-Edit's loss terms on the built-in world: which way each term pulls the editor's
output, measured where the exact target of every edit is known.

    python -m harness.probe RUN_DIR [--step N] [--n-per-type 6] [--dmd-draws 4]

For a fixed batch of edits (the shapes_edit validation split of the run's world), at three points,
the unchanged input (a copy), a half-made edit ((input + target) / 2) and the run's current output
(its editor at checkpoint N, default the latest), every loss term the run trains with is
differentiated with respect to the generator's output x0, weighted as in training (lambda_vlm for
the edit question, lambda_vlm x identity_weight for the identity question, lambda_dmd for DMD,
averaged over `--dmd-draws` draws of its time and noise; lambda_lpips; the no-op task's L2 at its
probability noop_prob). Each term's descent direction d = -dL/dx0 is reported per sample as its
norm, its cosine with (target - x0), and its component along that unit direction ("along": > 0
pulls toward the exact target, < 0 away from it); means per edit type and over all.

The critic's accuracy on the editor's own outputs is measured over the run's checkpoints: every
output is parsed back into a scene by the world's exact parser, which gives the right answer to
each of the paper's questions, and the critic's Yes/No answer is compared with it.

Writes RUN_DIR/probe/: forces.csv (point, term, edit type, sample, norm, cosine, along),
forces.md (means), forces.png, critic.csv and critic.png (accuracy by question kind over steps).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from harness.runstore import RunDir

Loss = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Probe:
    """A batch of edits with exact targets, as the method sees them."""

    records: list[Any]  # Edit objects: instruction, edit_type, object, caption_edit, source, target
    ref: torch.Tensor  # (B, 3, S, S) reference images in [-1, 1]
    target: torch.Tensor  # (B, 3, S, S) exact targets in [-1, 1]


def forces(x: torch.Tensor, target: torch.Tensor, terms: dict[str, Loss]) -> dict[str, dict[str, torch.Tensor]]:
    """{term: {norm, cosine, along}} of the descent direction -dL/dx of each term, per sample. Every
    loss is a sum over samples (each sample's loss depends on its own x only), so its gradient with
    respect to x holds the per-sample gradients."""
    to_target = (target - x).flatten(1).double()
    dist = to_target.norm(dim=1)
    out = {}
    for name, loss in terms.items():
        xi = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(xi), xi)
        d = -g.detach().flatten(1).double()
        norm = d.norm(dim=1)
        along = (d * to_target).sum(1) / dist.clamp_min(1e-12)
        cos = along / norm.clamp_min(1e-30)
        nan = torch.full_like(dist, float("nan"))
        out[name] = {"norm": norm, "cosine": torch.where(dist > 1e-6, cos, nan),
                     "along": torch.where(dist > 1e-6, along, nan)}
    return out


def npedit_terms(method: Any, probe: Probe, *, dmd_draws: int = 4, seed: int = 0) -> dict[str, Loss]:
    """The loss terms of an NP-Edit method (methods.np_edit.NPEdit) as functions of the output x0
    (latents), each summed over the batch and weighted as in training."""
    from methods.dmd import dmd_gradient, dmd_loss, guided_velocity
    from methods.questions import questions_for
    from methods.vlm_loss import vlm_loss

    m, bb = method.m, method.backbone
    recs, B = probe.records, len(probe.records)
    y_img = probe.ref.to(method.device)
    y_lat = bb.encode_image(y_img).detach()
    terms: dict[str, Loss] = {}
    if m.lambda_vlm > 0:
        qs = [questions_for(r.edit_type, r.instruction, r.object, identity=m.identity_question) for r in recs]
        for kind, weight in (("edit", 1.0), ("identity", m.identity_weight)):
            sel = [[q for q in row if q.kind == kind] for row in qs]
            if any(sel) and weight > 0:
                terms[f"vlm_{kind}"] = (lambda x, sel=sel, w=weight: m.lambda_vlm * w * B *
                                        vlm_loss(method.critic, bb.decode(x), y_img, sel, mode=m.vlm_loss,
                                                 temperature=m.vlm_temperature)[0])
    if method.use_dmd:
        with torch.no_grad():
            text_x = bb.encode_text([r.caption_edit for r in recs])
            uncond = bb.encode_text([""])[[0] * B]
        guidance = torch.tensor([m.guidance_by_type.get(r.edit_type, m.guidance) for r in recs], device=method.device)
        g = torch.Generator().manual_seed(seed)
        draws = [(m.dmd_t_min + (m.dmd_t_max - m.dmd_t_min) * torch.rand(B, generator=g), torch.randn(y_lat.shape, generator=g))
                 for _ in range(dmd_draws)]

        def dmd(x: torch.Tensor) -> torch.Tensor:
            total = x.sum() * 0.0
            for t, noise in draws:
                t, noise = t.to(method.device), noise.to(method.device)
                with torch.no_grad():
                    x_t = (1 - t.view(-1, 1, 1, 1)) * x.detach() + t.view(-1, 1, 1, 1) * noise
                    v_real = guided_velocity(method.teacher, x_t, t, text_x, uncond, guidance)
                    v_fake = method.A(x_t, t, text_x, None)
                    grad = dmd_gradient(x.detach(), x_t, t, v_real, v_fake)
                total = total + dmd_loss(x, grad)
            return m.lambda_dmd * B * total / len(draws)

        terms["dmd"] = dmd
    if method.lpips is not None:
        terms["lpips"] = lambda x: m.lambda_lpips * method.lpips(bb.decode(x).clamp(-1, 1), y_img).sum()
    if m.noop_prob > 0:
        terms["noop"] = lambda x: m.noop_prob * B * F.mse_loss(x.float(), y_lat.float())
    if len(terms) > 1:
        parts = dict(terms)
        terms["total"] = lambda x: sum(f(x) for f in parts.values())
    return terms


def probe_batch(world: Any, n_per_type: int, image_size: int) -> Probe:
    from benchmarks.shapes_edit import ShapesEdit, ShapesEditConfig
    from harness.data.sampling import to_tensor
    from harness.toyworld.render import render_pil

    bench = ShapesEdit(ShapesEditConfig(split="val", n_per_type=n_per_type, world=world))
    edits = [e for _, e in bench.edits()]
    ref = torch.stack([to_tensor(render_pil(e.source, world), image_size) for e in edits])
    target = torch.stack([to_tensor(render_pil(e.target, world), image_size) for e in edits])
    return Probe(edits, ref, target)


def critic_accuracy(critic: Any, probe: Probe, outputs: torch.Tensor, world: Any) -> list[dict[str, Any]]:
    """Per question on the editor's outputs: the exact answer (from the parsed output) and the critic's."""
    from harness.toyworld.critics import questions
    from harness.data.sampling import to_pil
    from harness.toyworld.parse import parse

    rows = []
    flat = []
    for b, e in enumerate(probe.records):
        shown = parse(to_pil(outputs[b]), world)
        for qa in questions(e, shown):
            flat.append((b, qa))
    with torch.no_grad():
        logits = critic.next_token_logits([qa.text for _, qa in flat], outputs, probe.ref, [b for b, _ in flat],
                                          ref_mask=[qa.two_images for _, qa in flat])
        yn = critic.yes_no_logits(logits)
    for (b, qa), said in zip(flat, (yn[:, 0] > yn[:, 1]).tolist()):
        rows.append({"sample": b, "edit_type": probe.records[b].edit_type, "kind": qa.kind,
                     "truth": bool(qa.answer), "critic": bool(said)})
    return rows


def _summarise(df: Any) -> str:
    """Markdown: mean 'along' and cosine per point x term, and per edit type at each point."""
    lines = []
    for point, d in df.groupby("point", sort=False):
        lines.append(f"\n### {point}\n")
        lines.append("| term | norm | cosine | along (toward target) |")
        lines.append("|---|---|---|---|")
        for term, t in d.groupby("term", sort=False):
            lines.append(f"| {term} | {t.norm.mean():.3g} | {t.cosine.mean():+.3f} | {t.along.mean():+.3g} |")
        piv = d.pivot_table(index="edit_type", columns="term", values="along", aggfunc="mean", sort=False)
        lines.append("\nalong (toward target), by edit type:\n")
        lines.append("| edit type | " + " | ".join(piv.columns) + " |")
        lines.append("|---" * (len(piv.columns) + 1) + "|")
        for et, row in piv.iterrows():
            lines.append(f"| {et} | " + " | ".join(f"{v:+.3g}" for v in row.values) + " |")
    return "\n".join(lines) + "\n"


def run_probe(run_dir: Path, *, step: int | None = None, n_per_type: int = 6, dmd_draws: int = 4,
              out: Any = sys.stdout) -> Path:
    import pandas as pd

    from harness.registry import METHODS
    from harness.toyworld.assets import world_of
    from harness.train import load_run, resolve_device, seed_everything

    rd = RunDir(run_dir)
    if not rd.config_path.exists():
        raise FileNotFoundError(f"{rd.config_path}: not a run folder (no config.yaml)")
    cfg = load_run(rd)
    if not hasattr(cfg.method, "lambda_dmd"):
        raise ValueError(f"{run_dir}: method {cfg.method.name!r} is not NP-Edit or one of its variants; "
                         "the probe measures NP-Edit's loss terms")
    world = world_of(cfg)
    ckpts = rd.checkpoints()
    if step is not None and step not in dict(ckpts):
        raise ValueError(f"{run_dir}: no checkpoint at step {step}; checkpoints: {[s for s, _ in ckpts] or 'none'}")
    seed_everything(cfg.seed, cfg.train.deterministic)
    method = METHODS.get(cfg.method.name).build(cfg, rd, resolve_device(cfg.train.device))
    chosen = step if step is not None else (ckpts[-1][0] if ckpts else 0)
    if chosen:
        method.load_state_dict(RunDir.load_checkpoint(dict(ckpts)[chosen])["state"])
    probe = probe_batch(world, n_per_type, method.backbone.image_size)
    bb = method.backbone
    with torch.no_grad():
        y_lat = bb.encode_image(probe.ref.to(method.device))
        t_lat = bb.encode_image(probe.target.to(method.device))
        current = bb.encode_image(method.editor().edit_tensor(probe.ref, [r.instruction for r in probe.records], seed=0))
    points = {"copy (unchanged input)": y_lat, "half-made edit": (y_lat + t_lat) / 2,
              f"current output (step {chosen})": current}
    terms = npedit_terms(method, probe, dmd_draws=dmd_draws, seed=cfg.seed)
    rows = []
    for point, x in points.items():
        for term, st in forces(x, t_lat, terms).items():
            for b, r in enumerate(probe.records):
                rows.append({"point": point, "term": term, "edit_type": r.edit_type, "sample": b,
                             **{k: float(v[b]) for k, v in st.items()}})
    df = pd.DataFrame(rows)
    folder = rd.path / "probe"
    folder.mkdir(exist_ok=True)
    df.to_csv(folder / "forces.csv", index=False)
    md = (f"# Force balance of {rd.id} at step {chosen} ({cfg.method.name}; {len(probe.records)} validation edits; "
          f"descent directions -dL/dx0 weighted as in training)\n" + _summarise(df))
    (folder / "forces.md").write_text(md)
    print(md, file=out)

    acc_rows = []
    for s, path in [(0, None), *ckpts]:
        if path is not None:
            method.load_state_dict(RunDir.load_checkpoint(path)["state"])
        with torch.no_grad():
            outs = method.editor().edit_tensor(probe.ref, [r.instruction for r in probe.records], seed=0)
        acc_rows += [{"step": s, **r} for r in critic_accuracy(method.critic, probe, outs.cpu(), world)] \
            if method.critic is not None else []
    if acc_rows:
        acc = pd.DataFrame(acc_rows)
        acc["right"] = acc.truth == acc.critic
        acc.to_csv(folder / "critic.csv", index=False)
        table = acc.groupby(["step", "kind"]).right.mean().unstack()
        print("critic accuracy on the editor's own outputs (exact answers from the parser), by question kind:",
              file=out)
        print(table.round(3).to_string(), file=out)
    _plot(df, acc_rows, folder)
    return folder


def _plot(df: Any, acc_rows: list, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    d = df[df.term != "total"]
    g = sns.catplot(data=d, x="term", y="along", col="point", kind="bar", errorbar="se", sharey=False,
                    height=3.2, aspect=1.1)
    g.set_titles("{col_name}")
    g.set_axis_labels("", "component toward the target")
    for ax in g.axes.flat:
        ax.axhline(0, color="k", lw=0.6)
        ax.tick_params(axis="x", rotation=30)
    g.savefig(folder / "forces.png", dpi=120)
    plt.close(g.figure)
    if acc_rows:
        acc = pd.DataFrame(acc_rows)
        acc["right"] = acc.truth == acc.critic
        fig, ax = plt.subplots(figsize=(5, 3.2))
        sns.lineplot(data=acc, x="step", y="right", hue="kind", marker="o", errorbar=None, ax=ax)
        ax.set_ylabel("critic accuracy on the editor's outputs")
        ax.set_ylim(0, 1)
        fig.tight_layout()
        fig.savefig(folder / "critic.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder of NP-Edit (or a variant) on the built-in world")
    p.add_argument("--step", type=int, default=None, help="checkpoint to probe (default: the latest)")
    p.add_argument("--n-per-type", type=int, default=6, help="validation edits per edit type (default 6)")
    p.add_argument("--dmd-draws", type=int, default=4, help="draws of DMD's time and noise averaged (default 4)")
    args = p.parse_args(argv)
    if args.n_per_type < 1 or args.dmd_draws < 1:
        p.error("--n-per-type and --dmd-draws must be >= 1")
    try:
        folder = run_probe(Path(args.run), step=args.step, n_per_type=args.n_per_type, dmd_draws=args.dmd_draws)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder}/forces.csv, forces.md, forces.png, critic.csv, critic.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
