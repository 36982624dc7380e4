"""The VLM's template questions per edit type (paper, Sec. 4.2 and Appendix E).

Local edits ask an edit-verification question (answer Yes) and an identity-preservation question
(answer Yes); removal replaces the first by "does the image have {object}" on the edited image
alone (answer No); customization asks whether the object is in a different pose and location, and
whether it keeps its identity (both Yes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EDIT_VERIFICATION = (
    "You are a professional digital artist and an expert image editor. You will be provided with two images.\n"
    "The first being the original real image, and the second being an edited version of the first. "
    "The objective is to evaluate if the editing instruction has been executed in the second image.\n"
    "Editing instruction: {instruction}\n"
    "Answer with a Yes or No.\n"
    "Note that sometimes the two images might look identical due to the failure of image editing. Answer No in that case."
)
IDENTITY_PRESERVATION = (
    "You are a professional digital artist and an expert image editor. You will be provided with two images.\n"
    "Answer with a Yes or No if the second image is exactly the same as the first image. "
    "IGNORE the changes in the second image because of the edit: {instruction}. Everything else should be the same."
)
REMOVAL = (
    "You are a professional digital artist and an expert image captioner. You will be provided with an image.\n"
    "Answer with a Yes or No if the image has {object}."
)
CUSTOMIZATION_CONTEXT = (
    "You are a professional digital artist and an expert in image editing. You will be provided with two images.\n"
    "Answer with a Yes or No if the {object} in the second image is in a different pose and location than in the "
    "first image. Note that sometimes the second image might not have the same object because of the failure of "
    "image editing. Answer No in that case."
)
CUSTOMIZATION_IDENTITY = (
    "You are a professional digital artist and an expert in image editing. You will be provided with two images.\n"
    "Answer with a Yes or No if the {object} in the second image is the exact same identity, with similar color, "
    "shape, and texture as in the first image. Note that sometimes the second image might not have the same object "
    "because of the failure of image editing. Answer No in that case."
)
# The generator's text input for customization (App. E.2).
CUSTOMIZATION_PROMPT = "Generate the main object shown in the first image in a different setting and pose: {scene}"

Kind = Literal["edit", "identity"]


@dataclass(frozen=True)
class Question:
    text: str
    answer: Literal["Yes", "No"]
    two_images: bool  # False: the VLM sees the edited image alone
    kind: Kind


def questions_for(edit_type: str, instruction: str, obj: str = "", *, identity: bool = True) -> list[Question]:
    """The questions D_QA for one edit; `identity=False` drops the identity-preservation question."""
    if edit_type == "customization":
        qs = [Question(CUSTOMIZATION_CONTEXT.format(object=obj or "object"), "Yes", True, "edit")]
        if identity:
            qs.append(Question(CUSTOMIZATION_IDENTITY.format(object=obj or "object"), "Yes", True, "identity"))
        return qs
    if edit_type == "remove":
        if not obj:
            raise ValueError(f"a removal edit needs the object's name (instruction: {instruction!r})")
        first = Question(REMOVAL.format(object=obj), "No", False, "edit")
    else:
        first = Question(EDIT_VERIFICATION.format(instruction=instruction), "Yes", True, "edit")
    qs = [first]
    if identity:
        qs.append(Question(IDENTITY_PRESERVATION.format(instruction=instruction), "Yes", True, "identity"))
    return qs
