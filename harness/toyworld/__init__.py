"""The built-in synthetic world: flat-coloured shapes, exact edits, captions and a parser."""
from harness.toyworld.edits import EDIT_TYPES, Edit, make_edit, sample_edit, supported_edit_types
from harness.toyworld.parse import parse
from harness.toyworld.render import render
from harness.toyworld.scenes import Obj, Scene, WorldConfig, sample_scene
from harness.toyworld.text import caption, vocabulary, words

__all__ = ["EDIT_TYPES", "Edit", "Obj", "Scene", "WorldConfig", "caption", "make_edit", "parse", "render",
           "sample_edit", "sample_scene", "supported_edit_types", "vocabulary", "words"]
