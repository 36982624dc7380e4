r"""The instruction dataset: build it with a VLM (paper, App. D), import a public one, look at it.

    python -m harness.data build --images SRC --vlm configs/data/qwen2.5-vl-32b.yaml --out DATASET \
        [--types color add ...] [--per-image 4] [--customization] [--prompts FILE] [vlm.KEY=VALUE ...]
    python -m harness.data import pico-banana sft.jsonl --images ROOT --out DATASET [--vlm CONFIG]
    python -m harness.data import gpt-image-edit ROOT --out DATASET [--vlm CONFIG]
    python -m harness.data import generic rows.jsonl|.csv|.parquet --out DATASET --image-column image \
        --instruction-column instruction --type-column edit_type [--target-column edited]
    python -m harness.data stats DATASET

A run trains on a dataset with `data.path=DATASET` (and the SFT baseline on imported pairs with
`data.paired_path=DATASET-pairs`). `data.fraction` draws a seeded subset of the reference images; the
subsets of one seed are nested (the 1% subset lies inside the 50% one), as the data-scale table needs.

The VLM is any OpenAI-compatible endpoint; the paper's setting is Qwen2.5-VL-32B-Instruct, e.g. served by vLLM:

    vllm serve Qwen/Qwen2.5-VL-32B-Instruct --served-model-name Qwen2.5-VL-32B-Instruct --tensor-parallel-size 2 --max-model-len 16384 --limit-mm-per-prompt '{"image": 2}' --port 8000

Errors in the input (a missing column, an unknown edit type, a VLM that cannot be reached or refuses the
key) are one line naming the file or key, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.judges.base import JudgeFatalError
from harness import config as C
from harness.data.edit_types import EDIT_TYPES, LOCAL_TYPES

EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from harness.data.build import BuildError
    from harness.data.importers import ImportError_
    from harness.data.instructions import DatasetError
    from harness.data.prompts import PromptFileError
    from harness.data.sources import SourceError

    return (C.ConfigError, BuildError, ImportError_, DatasetError, PromptFileError, SourceError, JudgeFatalError)


def _vlm_parser(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--vlm", metavar="CONFIG", required=required,
                   help="the VLM: a YAML file of the openai_api judge's keys (model, base_url, api_key_env, "
                        "temperature, max_tokens, concurrency, ...), e.g. configs/data/qwen2.5-vl-32b.yaml; "
                        "vlm.KEY=VALUE options override it")
    p.add_argument("--prompts", metavar="FILE", help="the prompt file (default: harness/data/prompts/default.yaml, "
                   "our unofficial wording of App. D; copy it to supply your own good/bad examples)")
    p.add_argument("--retry-failed", action="store_true", help="ask again the requests that failed before (vlm.retry_failed)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings and stop (no request is made)")


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (for --help) and one parser per command."""
    p = argparse.ArgumentParser(prog="python -m harness.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{build,import,stats}")

    from harness.data import build as B

    b = sub.add_parser("build", help="build an instruction dataset from reference images with a VLM (App. D)",
                       description=B.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--images", required=True, metavar="SRC",
                   help="a folder of images (captions beside them as NAME.txt), a JSONL/CSV list, parquet, "
                        "or a `datasets` save_to_disk folder")
    b.add_argument("--out", required=True, metavar="DATASET", help="the dataset folder (new, or an earlier build to resume)")
    b.add_argument("--types", nargs="+", default=None, metavar="TYPE",
                   help=f"edit types to propose (default: the ten local ones: {' '.join(LOCAL_TYPES)}); "
                        f"allowed: {' '.join(EDIT_TYPES)}")
    b.add_argument("--per-image", type=int, default=4, help="instructions asked for per image (the paper asks for 4)")
    b.add_argument("--customization", action="store_true",
                   help="also the customization branch: prominent-object check and new background captions")
    b.add_argument("--image-column", default="image", help="the image column of a list/parquet/datasets source")
    b.add_argument("--caption-column", default="caption", help="its caption column (c^y); images without one are captioned by the VLM")
    b.add_argument("--split", help="the split of a DatasetDict (default: train)")
    b.add_argument("--max-side", type=int, default=1024, help="the long side of the image sent to the VLM, in pixels")
    b.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    b.add_argument("--name", default="", help="the dataset's name (default: the folder's)")
    _vlm_parser(b, required=True)
    b.add_argument("options", nargs="*", metavar="vlm.KEY=VALUE", help="VLM config overrides")

    from harness.data import importers as I

    i = sub.add_parser("import", help="import a public editing dataset (targets dropped; pairs kept for SFT)",
                       description=I.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    I.add_arguments(i)
    i.add_argument("--vlm", metavar="CONFIG", help="write missing captions with a VLM: c^y by the caption prompt, "
                   "c^x by App. D's validity question (invalid records are dropped and counted)")
    i.add_argument("--prompts", metavar="FILE", help="the prompt file for --vlm (default: ours)")
    i.add_argument("--retry-failed", action="store_true", help="with --vlm: ask again the requests that failed before")
    i.add_argument("--dry-run", action="store_true", help="print the resolved settings and stop")
    i.add_argument("options", nargs="*", metavar="vlm.KEY=VALUE", help="VLM config overrides (with --vlm)")

    from harness.data import stats as S

    s = sub.add_parser("stats", help="counts per edit type, caption lengths, image sizes, a contact sheet",
                       description=S.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    S.add_arguments(s)
    return p, {"build": b, "import": i, "stats": s}


def _vlm(args: argparse.Namespace, out: Path):
    from harness.data.annotate import VLM, load_vlm_config

    options = list(args.options) + (["vlm.retry_failed=true"] if args.retry_failed else [])
    cfg = load_vlm_config(args.vlm, options)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / ".vlm_cache"
    return cfg, VLM(cfg, cache)


def _print_vlm(cfg, P) -> None:
    print(f"vlm:      {cfg.model} at {cfg.base_url} (key from ${cfg.api_key_env or '(none)'}; "
          f"temperature {cfg.temperature}, seed {cfg.seed}, max_tokens {cfg.max_tokens}, {cfg.image_format} images, "
          f"concurrency {cfg.concurrency}, parse_retries {cfg.parse_retries})")
    print(f"prompts:  {P.path} ({P.name}, version {P.version})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top, commands = parser()
    if not argv or argv[0] not in commands:
        top.parse_args(argv or ["--help"])  # --help, or a one-line error naming the commands
        return EXIT_USAGE
    args = commands[argv[0]].parse_intermixed_args(argv[1:])  # key=value options before or after the flags
    args.command = argv[0]
    _USER_ERRORS = _user_errors()
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "import":
            from harness.data import importers

            if not args.vlm and (args.options or args.retry_failed):
                given = " ".join(args.options) or "--retry-failed"
                raise C.ConfigError(f"{given}: VLM settings apply only with --vlm CONFIG (captions written by a VLM)")
            return importers.main(args, _vlm if args.vlm else None)
        from harness.data import stats

        return stats.main(args)
    except _USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _build(args: argparse.Namespace) -> int:
    from harness.data import build as B
    from harness.data import sources
    from harness.data.prompts import load_prompts

    types = list(args.types or LOCAL_TYPES)
    if args.customization and "customization" not in types:
        types.append("customization")
    out = Path(args.out)
    opts = B.BuildOptions(images=Path(args.images), out=out, types=types, per_image=args.per_image,
                          max_side=args.max_side, image_column=args.image_column, caption_column=args.caption_column or None,
                          split=args.split, name=args.name, limit=args.limit)
    opts.validate()
    P = load_prompts(args.prompts)
    cfg, vlm = _vlm(args, out)
    if args.dry_run:
        src = sources.open_images(opts.images, image_column=opts.image_column, caption_column=opts.caption_column,
                                  split=opts.split)
        print(f"images:   {src.path} ({src.kind}, {src.count} images{f', first {opts.limit}' if opts.limit else ''})")
        _print_vlm(cfg, P)
        print(f"types:    {' '.join(types)}; {opts.per_image} per image; VLM sees the long side at <= {opts.max_side} px")
        print(f"out:      {out} (reply cache {vlm.runner.cache.root}, state {out / B.STATE_DIR})")
        return 0
    info = B.build(opts, P, vlm, progress=sys.stderr.isatty())
    print(B.describe(info, out))
    print(f"train on it: python -m harness.train CONFIG data.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
