"""Small fixtures in the public formats of the editing datasets the importers read.

pico-banana-400k (apple/pico-banana-400k README; map_openimage_url_to_local.py adds local_input_image):
    sft.jsonl lines {"open_image_input_url", "text", "output_image", "edit_type", "summarized_text",
    "local_input_image"}; output_image relative to the release root (images/positive-edit/N.png).
GPT-Image-Edit-1.5M (UCSC-VLAA/GPT-Image-Edit-1.5M dataset card): gpt-edit/<source>/ folders with
    input/ and output/ images, metadata records {"dataset_source", "task", "input", "output",
    "instruction", "instruction_type", "input_description"} (+ "instruction_original" for OmniEdit).
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

RGB = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 160, 30), "yellow": (230, 200, 20),
       "grey": (128, 128, 128), "white": (250, 250, 250)}


def solid(path: Path, color: str, size: tuple[int, int] = (48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, RGB[color]).save(path)
    return path


def pico_banana(root: Path) -> Path:
    """A pico-banana release root with open images and edits; returns the sft.jsonl manifest."""
    oi = "openimages/train_0"
    solid(root / oi / "0000e2205e460318.jpg", "red", (64, 48))
    solid(root / oi / "0001eeaf4aed83f9.jpg", "blue", (40, 40))
    solid(root / oi / "000595fe6fee6369.jpg", "green")
    (root / oi / "0007cebe1b2ba653.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    for i, c in enumerate(["grey", "yellow", "white", "blue", "red", "green"], 1):
        solid(root / "images" / "positive-edit" / f"{i}.png", c, (64, 48))
    (root / "images" / "positive-edit" / "4.png").unlink()  # an edit that did not download
    url = "https://farm6.staticflickr.com/{}/{}_o.jpg"
    lines = [
        {"open_image_input_url": url.format(1, "a"), "output_image": "images/positive-edit/1.png",
         "text": "Remove the red flag and its white pole from the upper right of the image, seamlessly extending the sky.",
         "edit_type": "Remove an existing object", "summarized_text": "Flag removed; sky extended.",
         "local_input_image": f"{oi}/0000e2205e460318.jpg"},
        {"open_image_input_url": url.format(1, "a"), "output_image": "images/positive-edit/2.png",
         "text": "Make the car bright yellow.", "edit_type": "Change an object's attribute (e.g., color/material)",
         "summarized_text": "Car yellow.", "local_input_image": f"{oi}/0000e2205e460318.jpg"},
        {"open_image_input_url": url.format(2, "b"), "output_image": "images/positive-edit/3.png",
         "text": "Turn the wooden table into polished marble.", "edit_type": "Change an object's attribute (e.g., color/material)",
         "summarized_text": "Table marble.", "local_input_image": str((root / oi / "0001eeaf4aed83f9.jpg").resolve())},
        {"open_image_input_url": url.format(3, "c"), "output_image": "images/positive-edit/4.png",
         "text": "Apply a Van Gogh style to the whole photo.", "edit_type": "Strong artistic style transfer (e.g., Van Gogh/anime/etc.)",
         "summarized_text": "Van Gogh style.", "local_input_image": f"{oi}/000595fe6fee6369.jpg"},
        {"open_image_input_url": url.format(3, "c"), "output_image": "images/positive-edit/5.png",
         "text": "Zoom in on the boat.", "edit_type": "Zoom in", "summarized_text": "Zoom boat.",
         "local_input_image": f"{oi}/000595fe6fee6369.jpg"},
        {"open_image_input_url": url.format(4, "d"), "output_image": "images/positive-edit/6.png",
         "text": "Add a hot air balloon in the sky.", "edit_type": "Add a new object to the scene",
         "summarized_text": "Balloon added."},  # no local_input_image: not mapped to Open Images
        {"open_image_input_url": url.format(5, "e"), "output_image": "images/positive-edit/6.png",
         "text": "Turn the photo into a comic drawing.", "edit_type": "Photo → cartoon/sketch/comic",
         "summarized_text": "Comic.", "local_input_image": f"{oi}/0007cebe1b2ba653.jpg"},  # a broken source image
        {"open_image_input_url": url.format(2, "b"), "output_image": "images/positive-edit/6.png",
         "text": "Make it look like a pencil sketch.", "edit_type": "Photo to cartoon/sketch/comic",
         "summarized_text": "Sketch.", "local_input_image": f"{oi}/0001eeaf4aed83f9.jpg"},
    ]
    manifest = root / "jsonl" / "sft.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    return manifest


def gpt_image_edit(root: Path) -> Path:
    """gpt-edit/{omniedit, hqedit/edit} with images and metadata; returns the gpt-edit folder."""
    base = root / "gpt-edit"
    omni = base / "omniedit"
    recs = []
    for i, (task, instr, color) in enumerate([
        ("addition", "add a cat on the sofa", "red"),
        ("removal", "remove the lamp from the table", "blue"),
        ("swap", "replace the dog with a fox", "green"),
        ("attribute_modification", "make the chair wooden", "yellow"),
        ("style", "render it as an oil painting", "grey"),
    ]):
        sid = f"omni_{i:04d}"
        solid(omni / "input" / f"{sid}.png", color)
        solid(omni / "output" / f"{sid}.png", "white")
        recs.append({"id": sid, "dataset_source": "omniedit", "task": task, "input": f"input/{sid}.png",
                     "output": f"output/{sid}.png", "instruction": instr, "instruction_type": "original",
                     "input_description": f"a {color} room", "instruction_original": instr})
    (omni / "omniedit_gpt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    hq = base / "hqedit" / "edit"
    solid(hq / "input" / "hq_1.png", "blue")
    solid(hq / "output" / "hq_1.png", "red")
    (hq / "hqedit_gpt_edit.json").write_text(json.dumps([{
        "id": "hq_1", "dataset_source": "hqedit", "task": "edit", "input": "input/hq_1.png", "output": "output/hq_1.png",
        "instruction": "turn the blue wall red", "instruction_type": "original", "input_description": "a blue wall"}]))
    return base


def generic_csv(root: Path) -> Path:
    """A CSV of (image, instruction, type, edited, captions); returns it."""
    rows = [("a.png", "make the ball blue", "colour", "a_x.png", "a red ball", "a blue ball", ""),
            ("a.png", "remove the ball", "Remove", "a_y.png", "a red ball", "an empty table", ""),
            ("b.png", "zoom into the corner", "zoom", "b_x.png", "a green ball", "a corner", ""),
            ("b.png", "put a hat on the ball", "add", "b_y.png", "a green ball", "a green ball with a hat", "hat")]
    colors = {"a.png": "red", "b.png": "green", "a_x.png": "blue", "a_y.png": "white", "b_x.png": "grey", "b_y.png": "yellow"}
    for name, c in colors.items():
        solid(root / "imgs" / name, c)
    path = root / "edits.csv"
    lines = ["image,instruction,kind,edited,before,after,what"]
    lines += [",".join((f"imgs/{a}", b, c, f"imgs/{d}", e, f, g)) for a, b, c, d, e, f, g in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
