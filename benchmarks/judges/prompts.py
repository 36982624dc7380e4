"""Judge prompts as data.

Official prompts are others' text: the harness never ships them. For official numbers it reads them
from the user's own copy of the official repositories, by path, without executing any code:
  - VIEScore's prompt module (`vie_prompts.py`, also inside GEdit-Bench's `viescore/` folder of
    Step1X-Edit): a Python file of string constants, read with `ast`;
  - ImgEdit Basic's `prompts.json`: one prompt per edit type with an `<edit_prompt>` placeholder;
  - ImgEdit UGE's `UGE_bench.py`: its module-level string `prompt`, read with `ast`.
The harness's own prompts (below) have the same structure, placeholders and answer formats; every
result scored with them is marked `prompts: unofficial`.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BenchmarkDataError

OFFICIAL, UNOFFICIAL = "official", "unofficial"


# ---------------------------------------------------------------------------------------------
# Reading string constants from a Python file without running it


def read_string_constants(path: str | Path) -> dict[str, str]:
    """Module-level `NAME = "..."` assignments of a Python file (parsed, never executed)."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except FileNotFoundError:
        raise BenchmarkDataError(f"{path}: file not found") from None
    except SyntaxError as e:
        raise BenchmarkDataError(f"{path}: not valid Python ({e.msg}, line {e.lineno})") from None
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _const_str(node.value)
            if value is not None:
                out[node.targets[0].id] = value
    return out


def _const_str(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "a" "b" is one Constant; "a" + "b" is not
        left, right = _const_str(node.left), _const_str(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _require(consts: dict[str, str], names: list[str], path: Path) -> list[str]:
    missing = [n for n in names if n not in consts]
    if missing:
        raise BenchmarkDataError(f"{path}: expected string constants {', '.join(missing)} (VIEScore's prompt module)")
    return [consts[n] for n in names]


def _find_file(path: str | Path, name: str, subdirs: tuple[str, ...], what: str) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for sub in subdirs:
            cand = p / sub / name
            if cand.is_file():
                return cand
        tried = ", ".join(str(p / s / name) for s in subdirs)
        raise BenchmarkDataError(f"{p}: no {name} found (tried {tried}); expected {what}")
    raise BenchmarkDataError(f"{p}: file not found (expected {what})")


# ---------------------------------------------------------------------------------------------
# VIEScore


@dataclass(frozen=True)
class VIEPrompts:
    """The two VIEScore prompts of a task. `sc` holds the placeholder `<instruction>` (task tie)
    or `<prompt>` (task sdig); `pq` has none."""

    task: str  # "tie" (text-guided image editing) | "sdig" (subject-driven image generation)
    sc: str
    pq: str
    source: str  # official | unofficial
    path: str | None = None

    @property
    def placeholder(self) -> str:
        return "<instruction>" if self.task == "tie" else "<prompt>"

    def sc_for(self, text: str) -> str:
        return self.sc.replace(self.placeholder, text)


# Which constants of VIEScore's prompt module make each task's prompts (joined with newlines,
# as VIEScore composes them). "sdig" follows the same composition with its subject rules.
_VIE_PARTS = {
    "tie": (["_context_no_delimit", "_prompts_0shot_two_image_edit_rule", "_prompts_0shot_tie_rule_SC"],
            ["_context_no_delimit", "_prompts_0shot_rule_PQ"]),
    "sdig": (["_context_no_delimit", "_prompts_0shot_subject_image_gen_rule", "_prompts_0shot_sdig_rule_SC"],
             ["_context_no_delimit", "_prompts_0shot_rule_PQ"]),
}


def viescore_prompts(task: str, path: str | Path | None = None) -> VIEPrompts:
    """The official prompts from VIEScore's `vie_prompts.py` at `path` (the file, the `viescore/`
    folder, or GEdit-Bench's folder holding `viescore/`); without a path, the harness's own."""
    if task not in _VIE_PARTS:
        raise ValueError(f"VIEScore task must be one of {sorted(_VIE_PARTS)}, got {task!r}")
    if not path:
        sc, pq = _OWN_VIE[task]
        return VIEPrompts(task, sc, pq, UNOFFICIAL)
    file = _find_file(path, "vie_prompts.py", (".", "viescore"), "VIEScore's prompt module vie_prompts.py")
    consts = read_string_constants(file)
    sc_names, pq_names = _VIE_PARTS[task]
    _require(consts, list(dict.fromkeys(sc_names + pq_names)), file)
    sc = "\n".join(_require(consts, sc_names, file))
    pq = "\n".join(_require(consts, pq_names, file))
    placeholder = "<instruction>" if task == "tie" else "<prompt>"
    if placeholder not in sc:
        raise BenchmarkDataError(f"{file}: the {task} SC prompt has no {placeholder} placeholder")
    return VIEPrompts(task, sc, pq, OFFICIAL, str(file.resolve()))


# ---------------------------------------------------------------------------------------------
# ImgEdit


@dataclass(frozen=True)
class ImgEditPrompts:
    """Judge prompts per edit type, each with the `<edit_prompt>` placeholder."""

    by_type: dict[str, str]
    source: str
    path: str | None = None

    def for_sample(self, edit_type: str, instruction: str) -> str:
        return self.by_type[edit_type].replace("<edit_prompt>", instruction)


def imgedit_prompts(path: str | Path | None, edit_types: list[str]) -> ImgEditPrompts:
    """ImgEdit Basic's `prompts.json` at `path` (the file or its folder); without a path, the harness's own."""
    if not path:
        missing = [t for t in edit_types if t not in _OWN_IMGEDIT]
        if missing:
            raise BenchmarkDataError(f"the harness has no judge prompt for ImgEdit edit types {missing}; give prompts: PATH")
        return ImgEditPrompts({t: _OWN_IMGEDIT[t] for t in edit_types}, UNOFFICIAL)
    file = _find_file(path, "prompts.json", (".",), "ImgEdit's prompts.json ({edit_type: judge prompt})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkDataError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise BenchmarkDataError(f"{file}: expected a JSON object mapping each edit type to its prompt text")
    missing = [t for t in edit_types if t not in data]
    if missing:
        raise BenchmarkDataError(f"{file}: no prompt for edit types {missing} (has: {sorted(data)})")
    bad = [t for t in edit_types if "<edit_prompt>" not in data[t]]
    if bad:
        raise BenchmarkDataError(f"{file}: prompts for {bad} lack the <edit_prompt> placeholder")
    return ImgEditPrompts({t: data[t] for t in edit_types}, OFFICIAL, str(file.resolve()))


@dataclass(frozen=True)
class UGEPrompt:
    text: str
    source: str
    path: str | None = None

    def for_sample(self, instruction: str) -> str:
        return self.text.replace("<edit_prompt>", instruction)


def uge_prompt(path: str | Path | None) -> UGEPrompt:
    """The string `prompt` of ImgEdit's `UGE_bench.py` at `path` (the file or its folder); without a path, the harness's own."""
    if not path:
        return UGEPrompt(_OWN_UGE, UNOFFICIAL)
    file = _find_file(path, "UGE_bench.py", (".",), "ImgEdit's UGE_bench.py (which defines the judge prompt)")
    consts = read_string_constants(file)
    if "prompt" not in consts:
        raise BenchmarkDataError(f"{file}: no module-level string constant 'prompt' (ImgEdit UGE's judge prompt)")
    if "<edit_prompt>" not in consts["prompt"]:
        raise BenchmarkDataError(f"{file}: the UGE prompt lacks the <edit_prompt> placeholder")
    return UGEPrompt(consts["prompt"], OFFICIAL, str(file.resolve()))


# ---------------------------------------------------------------------------------------------
# The harness's own prompts (written for this project; same structure and answer formats)

_OWN_CONTEXT = """You are an expert reviewer of AI-generated and AI-edited pictures. Assess the picture(s) strictly by the rules that follow. Everything shown, people included, is synthetic, so there are no privacy concerns.

Answer with one JSON object and nothing else, keeping the reasoning to one or two short sentences:
{
"score" : [...],
"reasoning" : "..."
}"""

_OWN_TIE_SC = """RULES:

You get two pictures. The first is the original. The second was produced by applying an editing instruction to the first; if the edit failed, the two may be identical.

Give two integers from 0 to 10.
The first rates how completely the second picture carries out the instruction (0: the instruction is ignored; 10: it is carried out exactly).
The second rates how well everything the instruction does not mention is kept from the original (0: an unrelated picture; 10: only the requested change was made).
Answer score = [instruction_score, preservation_score].

Editing instruction: <instruction>
"""

_OWN_SDIG_SC = """RULES:

You get two pictures. The first shows a reference subject. The second was generated to show that same subject as a text prompt describes.

Give two integers from 0 to 10.
The first rates how well the second picture matches the text prompt (0: not at all; 10: fully).
The second rates how closely the subject in the second picture matches the reference subject's identity: its shape, colours, markings and details (0: a different subject; 10: the same subject).
Answer score = [prompt_score, identity_score].

Text prompt: <prompt>
"""

_OWN_PQ = """RULES:

You get one AI-generated picture. Judge only how it looks, not what it shows.

Give two integers from 0 to 10.
The first rates naturalness: plausible lighting, shadows, perspective, scale and materials (0: clearly implausible; 10: fully natural).
The second rates freedom from artifacts: no distortions, smears, seams, malformed hands or faces, stray text or watermarks (0: heavily damaged; 10: clean).
Answer score = [naturalness, artifacts].
"""

_OWN_VIE = {
    "tie": ("\n".join([_OWN_CONTEXT, _OWN_TIE_SC]), "\n".join([_OWN_CONTEXT, _OWN_PQ])),
    "sdig": ("\n".join([_OWN_CONTEXT, _OWN_SDIG_SC]), "\n".join([_OWN_CONTEXT, _OWN_PQ])),
}

# ImgEdit-style: three criteria per edit type, 1-5; the first is instruction compliance and caps the others.
_IMGEDIT_FOCUS = {
    "add": ("an object was to be added", ["Instruction Compliance", "Integration", "Preservation"],
            "the new object is present, of the requested kind, count and place",
            "the added object fits the scene's lighting, scale, perspective and shadows",
            "everything else in the picture is unchanged"),
    "remove": ("an object was to be removed", ["Instruction Compliance", "Fill Quality", "Preservation"],
               "the named object is gone entirely, with no remnants",
               "the uncovered area is filled plausibly, without smudges or ghosts",
               "everything else in the picture is unchanged"),
    "replace": ("one object was to be replaced by another", ["Instruction Compliance", "Integration", "Preservation"],
                "the old object is gone and the requested new one stands in its place",
                "the new object matches the scene's lighting, scale and perspective",
                "everything else in the picture is unchanged"),
    "adjust": ("an attribute of an object (colour, material, shape, texture) was to be changed",
               ["Instruction Compliance", "Realism", "Preservation"],
               "the requested attribute changed as asked, on the right object",
               "the changed object still looks physically plausible",
               "the object's identity and the rest of the picture are unchanged"),
    "style": ("the picture was to be rendered in another style", ["Style Match", "Content Preservation", "Rendering Quality"],
              "the result clearly shows the requested style",
              "the layout, objects and poses of the original are kept",
              "the stylised picture is clean and coherent"),
    "extract": ("one object was to be extracted onto a plain background", ["Instruction Compliance", "Object Fidelity", "Cutout Quality"],
                "only the requested object is shown, isolated on a plain background",
                "the object keeps its appearance and details from the original",
                "the object's edges are clean, with no leftover background"),
    "background": ("the background was to be changed", ["Instruction Compliance", "Integration", "Subject Preservation"],
                   "the background now shows what was asked",
                   "the foreground and new background agree in lighting and perspective",
                   "the foreground subjects are unchanged"),
    "action": ("a subject's action or pose was to be changed", ["Instruction Compliance", "Anatomy and Realism", "Identity Preservation"],
               "the subject now performs the requested action or pose",
               "the new pose is anatomically and physically plausible",
               "the subject's identity and the scene are kept"),
    "compose": ("several edits were to be made at once", ["Instruction Compliance", "Visual Quality", "Preservation"],
                "every requested change was made",
                "the edited regions look seamless and natural",
                "what the instruction does not mention is unchanged"),
}


def _own_imgedit_prompt(edit_type: str) -> str:
    task, names, c1, c2, c3 = _IMGEDIT_FOCUS[edit_type]
    return f"""You grade image edits in which {task}. You see the original picture first and the edited picture second.

Editing instruction: <edit_prompt>

Rate three criteria with integers from 1 (very poor) to 5 (excellent):
{names[0]}: {c1}.
{names[1]}: {c2}.
{names[2]}: {c3}.
Neither of the last two scores may exceed the first: an edit that ignores the instruction cannot score well elsewhere.

Reply in exactly this form:
Brief reasoning: <at most 20 words>
{names[0]}: <1-5>
{names[1]}: <1-5>
{names[2]}: <1-5>
"""


_OWN_IMGEDIT = {t: _own_imgedit_prompt(t) for t in _IMGEDIT_FOCUS}

_OWN_UGE = """You grade a difficult image edit: the instruction may need spatial reasoning, counting, or picking one of several similar objects. You see the original picture first and the edited picture second.

Editing instruction: <edit_prompt>

Judge together: whether exactly the right objects were changed as asked (nothing missing, nothing extra); whether the change looks natural; whether the edit stays within the intended region. If regions that should stay the same were altered, the score may not exceed 3.
1: the instruction is ignored or badly executed. 2: large deviations or clearly unnatural. 3: small deviations or visible flaws. 4: nearly right, minor flaws. 5: exactly right and seamless.

Reply in exactly this form:
Brief reasoning: <at most 20 words>
Score: <1-5>
"""
