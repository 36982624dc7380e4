"""Edit images with a trained run.

    python -m harness.edit --run RUN_DIR --image in.png --instruction "make the circle red" -o out.png
    python -m harness.edit --run RUN_DIR --images FOLDER --instruction "..." -o OUT_FOLDER
    python -m harness.edit --run RUN_DIR --jsonl edits.jsonl -o OUT_FOLDER   # lines: {"image": ..., "instruction": ..., "output"?: ...}

Python:

    from harness.edit import load_editor
    editor = load_editor("runs/toy/ab12cd34")
    [out] = editor.edit([Image.open("in.png")], ["make the circle red"])
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from PIL import Image

from harness.data.instructions import image_problem

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class EditError(ValueError):
    pass


def load_editor(run_dir: str | Path, device: str = "auto") -> Any:
    """Rebuild the editing model a run exported to RUN_DIR/model (or a model folder itself)."""
    run_dir = Path(run_dir)
    folder = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
    meta_path = folder / "editor.json"
    if not meta_path.exists():
        raise EditError(f"{meta_path}: not found; is {run_dir} a finished run? (its model is exported when training ends)")
    meta = json.loads(meta_path.read_text())
    loader = meta.get("loader", "")
    mod, _, fn = loader.partition(":")
    if not mod or not fn:
        raise EditError(f"{meta_path}: key 'loader' must be 'module:function', got {loader!r}")
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():  # user plugins that defined the method must be imported first
        from harness.config import read_yaml
        from harness.registry import load_plugins

        load_plugins(read_yaml(cfg_path).get("plugins") or [])
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return getattr(importlib.import_module(mod), fn)(folder, device=device)


def _jobs(args: argparse.Namespace) -> list[tuple[Path, str, Path]]:
    out = Path(args.output)
    if args.image:
        if not args.instruction:
            raise EditError("--instruction is required with --image")
        return [(Path(args.image), args.instruction, out)]
    if args.images:
        if not args.instruction:
            raise EditError("--instruction is required with --images")
        folder = Path(args.images)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise EditError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTS))})")
        return [(p, args.instruction, out / (p.stem + ".png")) for p in files]
    jobs = []
    path = Path(args.jsonl)
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            img, ins = rec["image"], rec["instruction"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise EditError(f"{path}:{i}: expected {{\"image\": ..., \"instruction\": ...}}: {e}") from None
        img_path = (path.parent / img) if not Path(img).is_absolute() else Path(img)
        jobs.append((img_path, ins, out / rec.get("output", f"{i:05d}_{Path(img).stem}.png")))
    return jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.edit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (or its model/ folder)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one input image")
    src.add_argument("--images", help="a folder of input images (same instruction for all)")
    src.add_argument("--jsonl", help="JSONL of {image, instruction[, output]} (image paths relative to the file)")
    p.add_argument("--instruction", help="the edit instruction")
    p.add_argument("-o", "--output", required=True, help="output image (--image) or folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = p.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise EditError(f"--batch-size: got {args.batch_size}; allowed: an integer >= 1")
        jobs = _jobs(args)
        for src_path, _, dst in jobs:  # every input read before the model loads
            problem = image_problem(src_path)
            if problem:
                raise EditError(f"{src_path}: input image: {problem}; allowed: an image file "
                                f"({', '.join(sorted(IMAGE_EXTS))})")
            if dst.suffix.lower() not in IMAGE_EXTS:
                raise EditError(f"{dst}: output: not an image file name; allowed: {', '.join(sorted(IMAGE_EXTS))}")
        editor = load_editor(args.run, device=args.device)
    except (EditError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    try:
        for i in tqdm(range(0, len(jobs), args.batch_size), disable=len(jobs) <= args.batch_size or not sys.stderr.isatty()):
            chunk = jobs[i : i + args.batch_size]
            images = [Image.open(s).convert("RGB") for s, _, _ in chunk]
            outs = editor.edit(images, [ins for _, ins, _ in chunk], seed=args.seed + i)
            for (_, _, dst), img in zip(chunk, outs):
                dst.parent.mkdir(parents=True, exist_ok=True)
                img.save(dst)
                print(dst)
    except KeyboardInterrupt:
        print("interrupted: the edits printed above are written", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
              f"{'' if args.debug else ' (--debug prints the traceback)'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
