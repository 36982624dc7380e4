"""VLM critic machinery on a tiny LLaVA (SigLIP + Qwen2) saved and loaded in the real formats, and
parity of the differentiable preprocessing with transformers' image processors on photographs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config import from_dict
from harness.models.base import Critic
from harness.models.critic import ClipStylePreprocess, answer_token_ids
from harness.models.llava import LlavaCriticConfig
from harness.models.tiny import build_tokenizer, save_tiny_llava
from harness.registry import CRITICS

QUESTIONS = [
    "The objective is to evaluate if the editing instruction has been executed in the second image. Editing instruction: make the circle red. Answer with a Yes or No.",
    "Answer with a Yes or No if the image has a circle.",
    "Answer with a Yes or No if the second image is exactly the same as the first image.",
]
VOCAB = [*QUESTIONS, "circle square red blue"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("llava") / "critic", vocab=VOCAB, image_size=32, patch_size=8, seed=0)


def load(path, **kw):
    return CRITICS.get("llava").build(from_dict(LlavaCriticConfig, {"path": str(path), **kw}))


@pytest.fixture(scope="module")
def critic(folder):
    return load(folder)


def images(n, seed=0, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# Yes/No ids


def test_yes_no_ids(critic):
    assert isinstance(critic, Critic)
    tok = critic.tokenizer
    assert critic.yes_ids == [tok.convert_tokens_to_ids("Yes")] and critic.no_ids == [tok.convert_tokens_to_ids("No")]
    assert critic.yes_ids != critic.no_ids


def test_answer_ids_with_and_without_leading_space():
    """A byte-level BPE (as Qwen2's) has distinct single tokens for 'Yes' and ' Yes': both count."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["Yes. No. Yes, it is. No, it is not. Answer Yes or No. Yes No Yes No"] * 50
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    yes = answer_token_ids(tok, "Yes")
    assert len(yes) == 2 and [tok.decode([i]) for i in yes] == ["Yes", " Yes"]
    with pytest.raises(ValueError, match="several tokens"):
        answer_token_ids(build_tokenizer(None, special=["<unk>"]), "Yes")  # character-level: Y ##e ##s


# ---------------------------------------------------------------------------------------------
# Logits


def test_logits_match_the_models_own_forward(critic):
    """Prompt assembly (chat template, image tokens, feature scattering, answer position) equals
    LlavaForConditionalGeneration's own path given the same pixel values."""
    ed, ref = images(1, 1), images(1, 2)
    ours = critic.next_token_logits(QUESTIONS[:1], ed, ref)
    text = critic.chat_prompt(QUESTIONS[0], 2)
    enc = critic.processor(text=[text], images=[critic.layout.blank_image()] * 2, return_tensors="pt")
    pixel_values = critic.layout.pixel_values(torch.cat([ref, ed]))
    with torch.no_grad():
        theirs = critic.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixel_values).logits[:, -1]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_batched_logits_equal_one_at_a_time(critic):
    ed, ref = images(2, 3), images(2, 4)
    index = [0, 1, 1]
    mask = [True, False, True]  # the removal question looks at the edited image alone
    batched = critic.next_token_logits(QUESTIONS, ed, ref, index=index, ref_mask=mask)
    single = []
    for q, i, m in zip(QUESTIONS, index, mask):
        single.append(critic.next_token_logits([q], ed[i : i + 1], ref[i : i + 1] if m else None))
    torch.testing.assert_close(batched, torch.cat(single), rtol=1e-5, atol=1e-5)
    lengths = {len(critic.prompt_ids(q, 2 if m else 1)) for q, m in zip(QUESTIONS, mask)}
    assert len(lengths) == 3  # really padded
    # and the images matter: another edited image gives other logits
    assert (critic.next_token_logits(QUESTIONS[:1], images(1, 9), ref[:1]) - batched[:1]).abs().max() > 1e-4


def test_gradient_reaches_edited_image_not_reference(critic):
    ed = images(3, 5).requires_grad_()
    ref = images(3, 6).requires_grad_()
    logits = critic.next_token_logits(QUESTIONS[:2], ed, ref, index=torch.tensor([0, 2]))
    yes_no = critic.yes_no_logits(logits)
    (yes_no[:, 0] - yes_no[:, 1]).sum().backward()
    assert ref.grad is None
    per_image = ed.grad.abs().flatten(1).sum(1)
    assert per_image[0] > 0 and per_image[2] > 0 and per_image[1] == 0  # image 1 is in no question
    assert not any(p.requires_grad for p in critic.model.parameters())

    # and it is the derivative of the Yes-No margin (directional finite difference)
    def margin(x):
        yn = critic.yes_no_logits(critic.next_token_logits(QUESTIONS[:2], x, ref, index=torch.tensor([0, 2])))
        return (yn[:, 0] - yn[:, 1]).sum()

    x0 = ed.detach().clamp(-0.9, 0.9).requires_grad_()  # away from the [-1, 1] clamp
    (grad,) = torch.autograd.grad(margin(x0), x0)
    step = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)) * 1e-2
    with torch.no_grad():
        fd = (margin(x0 + step) - margin(x0 - step)) / 2
    assert float((grad * step).sum()) == pytest.approx(float(fd), rel=0.05, abs=1e-6)


def count_calls(module, calls: list) -> None:
    """Count forward runs (module hooks do not fire in a checkpoint's recompute; forward itself does)."""
    forward = module.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    module.forward = counted


def test_gradient_checkpointing_recomputes_and_keeps_gradients(folder):
    results = []
    for ckpt in (False, True):
        c = load(folder, grad_checkpointing=ckpt)
        calls = []
        count_calls(c.model.model.language_model.layers[0].mlp, calls)  # runs inside the checkpointed layer
        ed = images(1, 7).requires_grad_()
        out = c.next_token_logits(QUESTIONS[:1], ed, images(1, 8))
        out[0, c.yes_ids[0]].backward()
        results.append((out.detach(), ed.grad.clone(), len(calls)))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)
    assert results[0][2] == 1 and results[1][2] == 2  # the layer ran again in the backward pass


def test_save_and_load_give_identical_logits(critic, tmp_path):
    ed, ref = images(2, 10), images(2, 11)
    before = critic.next_token_logits(QUESTIONS, ed, ref, index=[0, 1, 0])
    critic.save_pretrained(tmp_path / "copy")
    again = load(tmp_path / "copy")
    assert torch.equal(again.next_token_logits(QUESTIONS, ed, ref, index=[0, 1, 0]), before)
    assert again.yes_ids == critic.yes_ids and again.no_ids == critic.no_ids


def test_generate_answers_greedily(critic):
    ed = images(1, 12)
    logits = critic.next_token_logits([QUESTIONS[1]], ed)
    answer = critic.generate([ed[0]], QUESTIONS[1], max_new_tokens=3)
    first = critic.tokenizer.decode([int(logits[0].argmax())], skip_special_tokens=True)
    assert answer.split()[0] == first.strip()
    assert critic.generate([ed[0]], QUESTIONS[1], max_new_tokens=3) == answer


def test_bad_index_is_reported(critic):
    with pytest.raises(ValueError, match="pass `index`"):
        critic.next_token_logits(QUESTIONS, images(2))
    with pytest.raises(ValueError, match="index must have"):
        critic.next_token_logits(QUESTIONS[:1], images(2), index=[2])


# ---------------------------------------------------------------------------------------------
# Preprocessing parity with the processors on photographs


def _photos():
    import skimage.data as data

    return {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}


def _processors():
    from transformers import CLIPImageProcessor, SiglipImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    siglip = {"size": {"height": 384, "width": 384}}  # llava-interleave / OneVision's SigLIP
    clip = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}  # llava-1.5's CLIP
    return {
        "siglip": SiglipImageProcessor(**siglip), "siglip-pil": SiglipImageProcessorPil(**siglip),
        "clip": CLIPImageProcessor(**clip), "clip-pil": CLIPImageProcessorPil(**clip),
    }


@pytest.mark.parametrize("proc", ["siglip", "siglip-pil", "clip", "clip-pil"])
def test_differentiable_preprocessing_matches_the_processor_on_photos(proc):
    """The float path differs from the processor's 8-bit path by at most one 8-bit level after
    normalisation (the processor rounds after each resize pass; the float path cannot without
    losing its gradient): 1/255/std = 0.0078 for SigLIP (std 0.5), 0.0150 for CLIP (std 0.26).
    With `quantize` (straight-through rounding) the mean difference falls ~100x."""
    from PIL import Image

    ip = _processors()[proc]
    level = 1 / 255 / min(ip.image_std)
    for name, arr in _photos().items():
        expected = ip(images=Image.fromarray(arr), return_tensors="pt")["pixel_values"]
        tensor = torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 127.5 - 1
        for quantize in (False, True):
            ours = ClipStylePreprocess.from_image_processor(ip, quantize=quantize)(tensor).float()
            diff = (ours - expected).abs()
            print(f"{proc:10s} {name:10s} {tuple(arr.shape)} quantize={quantize!s:5s} max {diff.max():.4f} mean {diff.mean():.6f}")
            assert ours.shape == expected.shape
            assert diff.max() <= 2.05 * level if quantize else diff.max() <= 1.1 * level
            assert diff.mean() <= (1e-4 if quantize else 0.35 * level)
            if proc.startswith("siglip") and not quantize:
                assert diff.max() < 1e-2


def test_critic_preprocessing_matches_its_processor(critic):
    """The tiny critic's own (SigLIP, 32 px) layout against its saved processor on a photo."""
    from PIL import Image

    arr = np.array(Image.fromarray(_photos()["astronaut"]).resize((96, 96), Image.BICUBIC))
    expected = critic.processor.image_processor(images=Image.fromarray(arr), return_tensors="pt")["pixel_values"]
    ours = critic.layout.pixel_values(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert (ours - expected).abs().max() <= 1.1 / 255 / 0.5


def test_the_input_clamp_passes_the_critics_gradient_to_pixels_past_the_range():
    """The critic sees the image clamped to [-1, 1] as a saved file would be, but a generator pixel
    that overshoots still gets the critic's gradient (straight-through), as one inside the range does."""
    from harness.models.critic import to_unit

    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.3], requires_grad=True)
    y = to_unit(x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.5))
