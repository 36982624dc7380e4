"""LLaVA-OneVision, InternVL and Qwen2.5-VL critics on tiny models of the real classes saved and
loaded in the real formats: prompt assembly against each model's own forward (anyres / tiling /
M-RoPE, any image size), batching, gradients, checkpointing, and parity of the differentiable
preprocessing with the real-size image processors on photographs."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from harness.config import from_dict
from harness.models.base import Critic
from harness.models.internvl import InternVLCriticConfig, TilePreprocess
from harness.models.llava_onevision import AnyResPreprocess, LlavaOnevisionCriticConfig
from harness.models.qwen_vl import QwenPatchPreprocess, QwenVLCriticConfig
from harness.models.tiny import save_tiny_internvl, save_tiny_llava_onevision, save_tiny_qwen2_5_vl
from harness.registry import CRITICS

QUESTIONS = [
    "The objective is to evaluate if the editing instruction has been executed in the second image. Editing instruction: make the circle red. Answer with a Yes or No.",
    "Answer with a Yes or No if the image has a circle.",
    "Answer with a Yes or No if the second image is exactly the same as the first image.",
]
VOCAB = [*QUESTIONS, "circle square red blue"]
FAMILIES = {
    "llava_onevision": (save_tiny_llava_onevision, LlavaOnevisionCriticConfig),
    "internvl": (save_tiny_internvl, InternVLCriticConfig),
    "qwen2_5_vl": (save_tiny_qwen2_5_vl, QwenVLCriticConfig),
}
SIZES = [(32, 32), (48, 80), (100, 60), (512, 512)]  # the sizes decide anyres grids, tile counts and patch grids


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("critics")
    return {name: save(root / name, vocab=VOCAB, seed=0) for name, (save, _) in FAMILIES.items()}


def load(folders, family, **kw):
    return CRITICS.get(family).build(from_dict(FAMILIES[family][1], {"path": str(folders[family]), **kw}))


@pytest.fixture(scope="module")
def critics(folders):
    return {name: load(folders, name) for name in FAMILIES}


def images(n, hw=(32, 32), seed=0):
    return torch.rand(n, 3, *hw, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def model_logits(critic, family, question, ims):
    """The model's own forward on the processor's input ids and our differentiable pixel inputs."""
    n = ims.shape[0]
    hw = tuple(ims.shape[-2:])
    text = critic.chat_prompt(question, n)
    enc = critic.processor(text=[text], images=[[Image.new("RGB", (hw[1], hw[0]))] * n], return_tensors="pt")
    kw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if family == "llava_onevision":
        kw.update(critic.layout.pixel_values(ims, n), batch_num_images=enc["batch_num_images"])
    elif family == "internvl":
        kw["pixel_values"] = critic.layout.pixel_values(ims).flatten(0, 1)
        assert kw["pixel_values"].shape == enc["pixel_values"].shape  # the same tiles as the processor
    else:
        kw.update(critic.layout.pixel_values(ims), mm_token_type_ids=enc["mm_token_type_ids"])
        assert kw["pixel_values"].shape == enc["pixel_values"].shape and torch.equal(kw["image_grid_thw"], enc["image_grid_thw"])
    with torch.no_grad():
        return critic.model(**kw).logits[:, -1]


@pytest.mark.parametrize("family", FAMILIES)
def test_yes_no_ids_and_protocol(critics, family):
    c = critics[family]
    assert isinstance(c, Critic)
    tok = c.tokenizer
    assert c.yes_ids == [tok.convert_tokens_to_ids("Yes")] and c.no_ids == [tok.convert_tokens_to_ids("No")]
    assert not any(p.requires_grad for p in c.model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_the_models_own_forward_at_any_size(critics, family):
    """One- and two-image prompts at sizes that change the image-token counts: our prompt assembly,
    feature packing and (Qwen) M-RoPE positions equal the model's forward on its processor's inputs."""
    c = critics[family]
    counts = set()
    for k, hw in enumerate(SIZES):
        ed, ref = images(1, hw, 2 * k), images(1, hw, 2 * k + 1)
        torch.testing.assert_close(c.next_token_logits(QUESTIONS[1:2], ed), model_logits(c, family, QUESTIONS[1], ed), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c.next_token_logits(QUESTIONS[:1], ed, ref), model_logits(c, family, QUESTIONS[0], torch.cat([ref, ed])),
                                   rtol=1e-5, atol=1e-5)
        counts.add(len(c.prompt_ids(QUESTIONS[1], 1, [hw])))
    assert len(counts) > 1  # the sizes really gave different image-token counts


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_logits_equal_one_at_a_time(critics, family):
    c = critics[family]
    ed, ref = images(2, (48, 80), 3), images(2, (48, 80), 4)
    index, mask = [0, 1, 1], [True, False, True]  # the removal question looks at the edited image alone
    batched = c.next_token_logits(QUESTIONS, ed, ref, index=index, ref_mask=mask)
    single = [c.next_token_logits([q], ed[i : i + 1], ref[i : i + 1] if m else None) for q, i, m in zip(QUESTIONS, index, mask)]
    torch.testing.assert_close(batched, torch.cat(single), rtol=1e-5, atol=1e-5)
    assert (c.next_token_logits(QUESTIONS[:1], images(1, (48, 80), 9), ref[:1]) - batched[:1]).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_reaches_edited_image_not_reference(critics, family):
    c = critics[family]
    ed = images(3, (40, 56), 5).requires_grad_()
    ref = images(3, (40, 56), 6).requires_grad_()

    def margin(x):
        yn = c.yes_no_logits(c.next_token_logits(QUESTIONS[:2], x, ref, index=[0, 2], ref_mask=[True, False]))
        return (yn[:, 0] - yn[:, 1]).sum()

    margin(ed).backward()
    assert ref.grad is None
    per_image = ed.grad.abs().flatten(1).sum(1)
    assert per_image[0] > 0 and per_image[2] > 0 and per_image[1] == 0
    # the gradient is the derivative of the Yes-No margin (directional finite difference)
    x0 = ed.detach().clamp(-0.9, 0.9).requires_grad_()
    (grad,) = torch.autograd.grad(margin(x0), x0)
    step = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)) * 1e-2
    with torch.no_grad():
        fd = (margin(x0 + step) - margin(x0 - step)) / 2
    assert float((grad * step).sum()) == pytest.approx(float(fd), rel=0.05, abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_keeps_outputs_and_gradients(folders, family):
    results = []
    for ckpt in (False, True):
        c = load(folders, family, grad_checkpointing=ckpt)
        ed = images(1, (48, 80), 7).requires_grad_()
        out = c.next_token_logits(QUESTIONS[:1], ed, images(1, (48, 80), 8))
        out[0, c.yes_ids[0]].backward()
        results.append((out.detach(), ed.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_answers_greedily(critics, family):
    c = critics[family]
    ed = images(1, (48, 80), 12)
    logits = c.next_token_logits(QUESTIONS[1:2], ed)
    answer = c.generate([ed[0]], QUESTIONS[1], max_new_tokens=2)
    first = c.tokenizer.decode([int(logits[0].argmax())], skip_special_tokens=True).strip()
    assert answer.startswith(first)


def test_token_budget_options_keep_processor_and_layout_in_step(folders):
    few_tiles = load(folders, "internvl", max_tiles=1)
    ed = images(1, (48, 80), 1)
    assert few_tiles.layout.pixel_values(ed).shape[1] == 1 < load(folders, "internvl").layout.pixel_values(ed).shape[1]
    torch.testing.assert_close(few_tiles.next_token_logits(QUESTIONS[1:2], ed), model_logits(few_tiles, "internvl", QUESTIONS[1], ed),
                               rtol=1e-5, atol=1e-5)
    small = load(folders, "qwen2_5_vl", max_pixels=56 * 56)
    big = images(1, (112, 112), 2)
    assert small.layout.pixel_values(big)["image_grid_thw"].tolist() == [[1, 4, 4]]
    torch.testing.assert_close(small.next_token_logits(QUESTIONS[1:2], big), model_logits(small, "qwen2_5_vl", QUESTIONS[1], big),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Preprocessing parity with the real-size processors (both transformers backends) on photographs


def _inputs():
    import skimage.data as data

    out = {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    g = torch.Generator().manual_seed(0)
    for side in (32, 512):  # the sizes the critic sees in the built-in world and at SD3.5 / FLUX resolution
        out[f"noise{side}"] = torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8).numpy()
    return out


def _real_processors(backend: str):
    """Image processors configured as the real checkpoints' (LLaVA-OneVision: SigLIP 384 anyres, CLIP
    mean/std; InternVL '-hf': 448 tiles up to 12, ImageNet mean/std; Qwen2.5-VL: defaults)."""
    from transformers import GotOcr2ImageProcessor, LlavaOnevisionImageProcessor, Qwen2VLImageProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ov, go, qw = {
        "torchvision": (LlavaOnevisionImageProcessor, GotOcr2ImageProcessor, Qwen2VLImageProcessor),
        "pil": (LlavaOnevisionImageProcessorPil, GotOcr2ImageProcessorPil, Qwen2VLImageProcessorPil),
    }[backend]
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    return ov(), go(size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=12, **imagenet), qw()


def _ours_and_theirs(kind, procs, pil, x, quantize):
    ov, go, qw = procs
    if kind == "ov-anyres":
        return AnyResPreprocess.from_image_processor(ov, quantize=quantize).single(x)[0], ov(images=[pil], return_tensors="pt")["pixel_values"][0]
    if kind == "ov-multi":
        return AnyResPreprocess.from_image_processor(ov, quantize=quantize).multi(x)[0], ov(images=[[pil, pil]], return_tensors="pt")["pixel_values"][0]
    if kind == "internvl":
        enc = go(images=[pil], return_tensors="pt")
        ours = TilePreprocess.from_image_processor(go, quantize=quantize)(x)[0]
        assert ours.shape[0] == int(enc["num_patches"][0])
        return ours, enc["pixel_values"]
    enc = qw(images=[pil], return_tensors="pt")
    ours, grid = QwenPatchPreprocess.from_image_processor(qw, quantize=quantize)(x)
    assert torch.equal(grid, enc["image_grid_thw"])
    return ours, enc["pixel_values"]


@pytest.mark.parametrize("kind", ["ov-anyres", "ov-multi", "internvl", "qwen"])
def test_differentiable_preprocessing_matches_the_real_processors(kind):
    """Against the default (torchvision) processors AutoProcessor loads: at most ~one 8-bit level
    after normalisation (1/255/std: 0.0150 for CLIP's std, 0.0175 for ImageNet's), the processor
    rounding to 8 bits after each resize pass, the float path not. Against the PIL backends: within
    one level of the two backends' own disagreement (PIL and torchvision differ by up to 7 levels
    where one side is upscaled and the other downscaled, e.g. Qwen's 427x640 -> 420x644)."""
    procs = {b: _real_processors(b) for b in ("torchvision", "pil")}
    for name, arr in _inputs().items():
        pil = Image.fromarray(arr)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 127.5 - 1
        level = 1 / 255 / min(procs["torchvision"][1 if kind == "internvl" else 0].image_std)
        tv = _ours_and_theirs(kind, procs["torchvision"], pil, x, False)[1]
        for backend in ("torchvision", "pil"):
            for quantize in (False, True):
                ours, theirs = _ours_and_theirs(kind, procs[backend], pil, x, quantize)
                assert ours.shape == theirs.shape
                diff = (ours.float() - theirs).abs()
                print(f"{kind:9s} {backend:11s} {name:10s} {tuple(arr.shape)} quantize={quantize!s:5s} max {diff.max():.4f} mean {diff.mean():.6f}")
                backends = (theirs - tv).abs()  # zero for the torchvision backend itself
                assert diff.max() <= (2.05 if quantize else 1.15) * level + float(backends.max())
                assert diff.mean() <= (1e-3 if quantize else 0.35 * level) + float(backends.mean())
