"""Tiny randomly initialised models of the real classes, saved in the real on-disk formats.

They serve tests (no hub downloads) and are the starting points of the built-in world's teacher
and critics. Every folder loads back through the ordinary `from_pretrained(path)` path:

- `save_tiny_sd3`: a diffusers Stable Diffusion 3 folder (model_index.json, transformer/, scheduler/,
  text_encoder(s)/ + tokenizer(s)/, and vae/ unless in pixel space).
- `save_tiny_llava`: a transformers LLaVA folder (LlavaForConditionalGeneration with a SigLIP vision
  tower and a Qwen2 language model, plus a LlavaProcessor with a chat template and an image token).

Tokenizers are built offline with `tokenizers`: word-level over a given vocabulary, or, without one,
a character-level WordPiece that spells any ASCII text.
"""
from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
IM_START, IM_END, IMAGE = "<|im_start|>", "<|im_end|>", "<image>"

# A ChatML template (as Qwen2 uses) whose message content may be a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} items; each image becomes one image token.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Words every tiny critic knows, whatever the caller's vocabulary: chat roles and the answers.
_CHAT_WORDS = ["system", "user", "assistant", "Yes", "No", "yes", "no"]


# ---------------------------------------------------------------------------------------------
# Folder writing


def write_folder_atomically(folder: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Run `fill(tmp)` on a fresh sibling folder, then move it to `folder` (replacing an old one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        fill(tmp)
        if folder.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, trash / "old")
            os.replace(tmp, folder)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ---------------------------------------------------------------------------------------------
# Tokenizers


def _words(vocab: Iterable[str]) -> list[str]:
    """Split phrases into the words a Whitespace pre-tokenizer produces (\\w+ | [^\\w\\s]+), keeping order."""
    from tokenizers.pre_tokenizers import Whitespace

    pre = Whitespace()
    out: dict[str, None] = {}
    for phrase in vocab:
        for w, _ in pre.pre_tokenize_str(phrase):
            out[w] = None
    return list(out)


def build_tokenizer(
    vocab: Sequence[str] | None,
    *,
    special: Sequence[str],
    unk: str = UNK,
    bos: str | None = None,
    eos: str | None = None,
    model_max_length: int = 77,
    lowercase: bool = False,
    extra: dict | None = None,
):
    """A fast tokenizer built offline.

    With `vocab`: word-level over the words of `vocab` (phrases are split like the pre-tokenizer does).
    Without: character-level WordPiece (letters, digits, punctuation; '##' continuations), which
    spells any ASCII text. `special` tokens come first (ids 0..), then the vocabulary. When `bos`/`eos`
    are given they wrap every encoded sequence (as CLIP's and T5's tokenizers do).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel, WordPiece
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(special))
    if vocab is not None:
        words = [w for w in _words(vocab) if w not in specials]
        if lowercase:
            words = list(dict.fromkeys(w.lower() for w in words))
        table = {t: i for i, t in enumerate(specials + words)}
        tok = Tokenizer(WordLevel(table, unk_token=unk))
        tok.decoder = None
    else:
        chars = list(string.ascii_letters + string.digits + string.punctuation)
        pieces = chars + ["##" + c for c in chars]
        table = {t: i for i, t in enumerate(specials + pieces)}
        tok = Tokenizer(WordPiece(table, unk_token=unk, max_input_chars_per_word=100))
        tok.decoder = decoders.WordPiece()
    tok.normalizer = normalizers.Lowercase() if lowercase else None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos is not None or eos is not None:
        single = " ".join([*([bos] if bos else []), "$A", *([eos] if eos else [])])
        pair = " ".join([*([bos] if bos else []), "$A", *([eos] if eos else []), "$B", *([eos] if eos else [])])
        pairs = [(t, table[t]) for t in (bos, eos) if t is not None]
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=pairs)
    tok.add_special_tokens(specials)
    kwargs = dict(tokenizer_object=tok, unk_token=unk, model_max_length=model_max_length)
    if PAD in table:
        kwargs["pad_token"] = PAD
    if bos:
        kwargs["bos_token"] = bos
    if eos:
        kwargs["eos_token"] = eos
    kwargs.update(extra or {})
    return PreTrainedTokenizerFast(**kwargs)


# ---------------------------------------------------------------------------------------------
# Stable Diffusion 3


def save_tiny_sd3(
    folder: str | os.PathLike,
    *,
    pixel_space: bool = True,
    three_text_encoders: bool = False,
    vocab: Sequence[str] | None = None,
    image_size: int = 32,
    patch_size: int = 2,
    num_layers: int = 2,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    pos_embed_max_size: int | None = None,
    dual_attention_layers: Sequence[int] = (),
    qk_norm: str | None = None,
    latent_channels: int = 4,
    vae_block_out_channels: Sequence[int] = (8, 16),
    text_hidden_size: int = 32,
    text_layers: int = 2,
    text_heads: int = 2,
    text_max_length: int = 16,
    lowercase: bool = True,
    shift: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a tiny random Stable Diffusion 3 folder loadable by `SD3Backbone` (and by diffusers'
    StableDiffusion3Pipeline when it has a VAE and three text encoders).

    pixel_space: no vae/; the transformer works on 3-channel images in [-1, 1] of `image_size`.
    Otherwise a tiny AutoencoderKL with `len(vae_block_out_channels) - 1` downsamplings.
    three_text_encoders: the real SD3 layout (two CLIPTextModelWithProjection + one T5EncoderModel);
    otherwise one CLIPTextModelWithProjection (text_encoder/ + tokenizer/).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vae_factor = 1 if pixel_space else 2 ** (len(vae_block_out_channels) - 1)
    if image_size % (vae_factor * patch_size):
        raise ValueError(f"image_size {image_size} must be a multiple of vae factor x patch size = {vae_factor * patch_size}")
    sample_size = image_size // vae_factor
    channels = 3 if pixel_space else latent_channels
    inner = num_attention_heads * attention_head_dim
    grid = sample_size // patch_size

    def clip(hidden: int, proj: int, tokenizer):
        cfg = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=text_max_length,
            projection_dim=proj,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return CLIPTextModelWithProjection(cfg)

    def clip_tokenizer():
        return build_tokenizer(
            vocab, special=[PAD, UNK, BOS, EOS], bos=BOS, eos=EOS, model_max_length=text_max_length, lowercase=lowercase
        )

    components: dict[str, tuple[str, str, object] | None] = {}
    tok = clip_tokenizer()
    if tok.eos_token_id == 2:  # CLIP treats eos id 2 as the legacy "argmax of ids" pooling rule
        raise AssertionError("tiny CLIP tokenizer must not give <eos> id 2")
    if three_text_encoders:
        h1, h2 = text_hidden_size, 2 * text_hidden_size
        joint = 4 * text_hidden_size  # T5 width; the two CLIP widths (3x) are zero-padded to it
        components["text_encoder"] = ("transformers", "CLIPTextModelWithProjection", clip(h1, h1, tok))
        components["tokenizer"] = ("transformers", "PreTrainedTokenizerFast", tok)
        tok2 = clip_tokenizer()
        components["text_encoder_2"] = ("transformers", "CLIPTextModelWithProjection", clip(h2, h2, tok2))
        components["tokenizer_2"] = ("transformers", "PreTrainedTokenizerFast", tok2)
        tok3 = build_tokenizer(vocab, special=[PAD, EOS, UNK], eos=EOS, model_max_length=text_max_length, lowercase=lowercase)
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(tok3),
                d_model=joint,
                d_kv=joint // text_heads,
                d_ff=2 * joint,
                num_layers=text_layers,
                num_heads=text_heads,
                pad_token_id=tok3.pad_token_id,
                eos_token_id=tok3.eos_token_id,
                decoder_start_token_id=tok3.pad_token_id,
            )
        )
        components["text_encoder_3"] = ("transformers", "T5EncoderModel", t5)
        components["tokenizer_3"] = ("transformers", "PreTrainedTokenizerFast", tok3)
        pooled = h1 + h2
    else:
        joint = text_hidden_size
        components["text_encoder"] = ("transformers", "CLIPTextModelWithProjection", clip(text_hidden_size, text_hidden_size, tok))
        components["tokenizer"] = ("transformers", "PreTrainedTokenizerFast", tok)
        components["text_encoder_2"] = components["tokenizer_2"] = None
        components["text_encoder_3"] = components["tokenizer_3"] = None
        pooled = text_hidden_size

    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=patch_size,
        in_channels=channels,
        num_layers=num_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=joint,
        caption_projection_dim=inner,
        pooled_projection_dim=pooled,
        out_channels=channels,
        pos_embed_max_size=pos_embed_max_size or 2 * grid,
        dual_attention_layers=tuple(dual_attention_layers),
        qk_norm=qk_norm,
    )
    components["transformer"] = ("diffusers", "SD3Transformer2DModel", transformer)
    if pixel_space:
        components["vae"] = None
    else:
        blocks = tuple(vae_block_out_channels)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(blocks),
            up_block_types=("UpDecoderBlock2D",) * len(blocks),
            block_out_channels=blocks,
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=min(blocks[0], 8),
            sample_size=image_size,
            scaling_factor=1.5,
            shift_factor=0.1,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        components["vae"] = ("diffusers", "AutoencoderKL", vae)
    components["scheduler"] = ("diffusers", "FlowMatchEulerDiscreteScheduler", FlowMatchEulerDiscreteScheduler(shift=shift))
    components["image_encoder"] = components["feature_extractor"] = None

    def fill(tmp: Path) -> None:
        import diffusers

        index: dict[str, object] = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__}
        for name, entry in components.items():
            if entry is None:
                index[name] = [None, None]
                continue
            lib, cls, obj = entry
            obj.save_pretrained(tmp / name)
            index[name] = [lib, cls]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))

    return write_folder_atomically(folder, fill)


# ---------------------------------------------------------------------------------------------
# LLaVA


def save_tiny_llava(
    folder: str | os.PathLike,
    *,
    vocab: Sequence[str] | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    vision_dim: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    text_dim: int = 32,
    text_layers: int = 2,
    text_heads: int = 2,
    text_kv_heads: int | None = None,
    max_position_embeddings: int = 1024,
    image_processor: str = "siglip",
    seed: int = 0,
) -> Path:
    """Write a tiny random LlavaForConditionalGeneration (SigLIP vision tower + Qwen2 LM) with a
    LlavaProcessor (SiglipImageProcessor or CLIPImageProcessor, word-level tokenizer with a ChatML
    chat template and an `<image>` token), all loadable with `from_pretrained(folder)`.

    Each image becomes (image_size / patch_size)^2 tokens. `vocab`: the words the tokenizer knows
    (e.g. every word of the questions it must read); chat words and Yes/No are always added.
    """
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    torch.manual_seed(seed)
    words = None if vocab is None else [*_CHAT_WORDS, *vocab]
    tokenizer = build_tokenizer(
        words,
        special=[PAD, UNK, IM_START, IM_END, IMAGE],
        model_max_length=max_position_embeddings,
        extra={"eos_token": IM_END, "extra_special_tokens": {"image_token": IMAGE}},
    )
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    vision = SiglipVisionConfig(
        hidden_size=vision_dim,
        intermediate_size=2 * vision_dim,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=text_dim,
        intermediate_size=2 * text_dim,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads or text_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if image_processor == "siglip":
        improc = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    elif image_processor == "clip":
        improc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"image_processor must be 'siglip' or 'clip', got {image_processor!r}")
    processor = LlavaProcessor(
        image_processor=improc,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=0,
    )

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return write_folder_atomically(folder, fill)


# ---------------------------------------------------------------------------------------------
# FLUX.1 / FLUX.1 Kontext


def save_tiny_flux(
    folder: str | os.PathLike,
    *,
    kontext: bool = False,
    guidance_embeds: bool = True,
    vocab: Sequence[str] | None = None,
    image_size: int = 32,
    num_layers: int = 1,
    num_single_layers: int = 1,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    axes_dims_rope: Sequence[int] = (4, 6, 6),
    latent_channels: int = 16,
    vae_block_out_channels: Sequence[int] = (8, 16),
    text_hidden_size: int = 32,
    text_layers: int = 2,
    text_heads: int = 2,
    clip_max_length: int = 16,
    t5_max_length: int = 16,
    lowercase: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiny random FLUX.1 (or FLUX.1 Kontext) diffusers folder: FluxTransformer2DModel,
    AutoencoderKL with `latent_channels` channels (packed 2x2 by the transformer), CLIPTextModel
    (pooled) + T5EncoderModel (hidden states), their tokenizers, and FLUX's dynamically shifted
    FlowMatchEulerDiscreteScheduler. Loadable by `FluxBackbone` and by diffusers' FluxPipeline /
    FluxKontextPipeline."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    blocks = tuple(vae_block_out_channels)
    vae_factor = 2 ** (len(blocks) - 1)
    if image_size % (2 * vae_factor):
        raise ValueError(f"image_size {image_size} must be a multiple of 2 x vae factor = {2 * vae_factor}")
    if sum(axes_dims_rope) != attention_head_dim:
        raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to attention_head_dim {attention_head_dim}")

    clip_tok = build_tokenizer(vocab, special=[PAD, UNK, BOS, EOS], bos=BOS, eos=EOS, model_max_length=clip_max_length, lowercase=lowercase)
    if clip_tok.eos_token_id == 2:  # CLIP treats eos id 2 as the legacy "argmax of ids" pooling rule
        raise AssertionError("tiny CLIP tokenizer must not give <eos> id 2")
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=text_hidden_size, intermediate_size=2 * text_hidden_size,
            num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=clip_max_length,
            projection_dim=text_hidden_size, pad_token_id=clip_tok.pad_token_id, bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
        )
    )
    t5_tok = build_tokenizer(vocab, special=[PAD, EOS, UNK], eos=EOS, model_max_length=t5_max_length, lowercase=lowercase)
    joint = 2 * text_hidden_size
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok), d_model=joint, d_kv=joint // text_heads, d_ff=2 * joint, num_layers=text_layers,
            num_heads=text_heads, pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id,
            decoder_start_token_id=t5_tok.pad_token_id,
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=joint,
        pooled_projection_dim=text_hidden_size,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=tuple(axes_dims_rope),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=min(blocks[0], 8),
        sample_size=image_size,
        scaling_factor=0.3611,  # FLUX.1's
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1's scheduler settings
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    components: dict[str, tuple[str, str, object] | None] = {
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", scheduler),
        "text_encoder": ("transformers", "CLIPTextModel", clip),
        "tokenizer": ("transformers", "PreTrainedTokenizerFast", clip_tok),
        "text_encoder_2": ("transformers", "T5EncoderModel", t5),
        "tokenizer_2": ("transformers", "PreTrainedTokenizerFast", t5_tok),
        "transformer": ("diffusers", "FluxTransformer2DModel", transformer),
        "vae": ("diffusers", "AutoencoderKL", vae),
        "image_encoder": None,
        "feature_extractor": None,
    }

    def fill(tmp: Path) -> None:
        import diffusers

        index: dict[str, object] = {
            "_class_name": "FluxKontextPipeline" if kontext else "FluxPipeline",
            "_diffusers_version": diffusers.__version__,
        }
        for name, entry in components.items():
            if entry is None:
                index[name] = [None, None]
                continue
            lib, cls, obj = entry
            obj.save_pretrained(tmp / name)
            index[name] = [lib, cls]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))

    return write_folder_atomically(folder, fill)


# ---------------------------------------------------------------------------------------------
# VLM critics beyond LLaVA-1.5: LLaVA-OneVision, InternVL, Qwen2.5-VL


def chatml_template(image_text: str) -> str:
    """A ChatML template (as Qwen2 / Qwen2.5 chat models use) in which each {"type": "image"} item
    of a message's content becomes `image_text`."""
    return LLAVA_CHAT_TEMPLATE.replace("{{ '<image>' }}", "{{ '" + image_text + "' }}")


def _tiny_vlm_tokenizer(vocab: Sequence[str] | None, special: Sequence[str], max_length: int, extra: dict):
    words = None if vocab is None else [*_CHAT_WORDS, *vocab]
    return build_tokenizer(
        words, special=[PAD, UNK, IM_START, IM_END, *special], model_max_length=max_length,
        extra={"eos_token": IM_END, **extra},
    )


def _qwen2_text_config(tokenizer, *, dim: int, layers: int, heads: int, max_position_embeddings: int, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False, **extra,
    )


def _save_vlm(folder, model, processor, tokenizer) -> Path:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return write_folder_atomically(folder, fill)


def save_tiny_llava_onevision(
    folder: str | os.PathLike,
    *,
    vocab: Sequence[str] | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    max_crops: int = 2,
    vision_aspect_ratio: str = "anyres_max_9",
    vision_dim: int = 32,
    vision_layers: int = 2,
    text_dim: int = 32,
    text_layers: int = 2,
    heads: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny random LlavaOnevisionForConditionalGeneration (SigLIP + Qwen2) with a
    LlavaOnevisionProcessor whose anyres grid pinpoints are the multiples of `image_size` up to
    `max_crops` x `max_crops` (the real one: 384 px crops, up to 6 x 6)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    torch.manual_seed(seed)
    tokenizer = _tiny_vlm_tokenizer(vocab, [IMAGE, "<video>"], max_position_embeddings,
                                    {"extra_special_tokens": {"image_token": IMAGE, "video_token": "<video>"}})
    template = chatml_template(IMAGE)
    tokenizer.chat_template = template
    pinpoints = [[image_size * i, image_size * j] for i in range(1, max_crops + 1) for j in range(1, max_crops + 1)]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=vision_dim, intermediate_size=2 * vision_dim, num_hidden_layers=vision_layers,
            num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
        ),
        text_config=_qwen2_text_config(tokenizer, dim=text_dim, layers=text_layers, heads=heads,
                                       max_position_embeddings=max_position_embeddings),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio=vision_aspect_ratio,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    improc = LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints)
    processor = LlavaOnevisionProcessor(
        image_processor=improc, tokenizer=tokenizer, num_image_tokens=(image_size // patch_size) ** 2,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}),
        vision_feature_select_strategy="full", chat_template=template, image_token=IMAGE,
        vision_aspect_ratio=vision_aspect_ratio,
    )
    return _save_vlm(folder, model, processor, tokenizer)


INTERNVL_IMG_START, INTERNVL_IMG_END, INTERNVL_IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


def save_tiny_internvl(
    folder: str | os.PathLike,
    *,
    vocab: Sequence[str] | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    max_patches: int = 4,
    vision_dim: int = 32,
    vision_layers: int = 2,
    text_dim: int = 32,
    text_layers: int = 2,
    heads: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny random transformers-native InternVLForConditionalGeneration (InternViT + pixel
    shuffle + Qwen2, as the "-hf" checkpoints) with an InternVLProcessor whose GotOcr2 image
    processor tiles images into `image_size` crops (1..`max_patches` plus a thumbnail), ImageNet
    mean/std as InternVL's."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
    )
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    if image_size % (2 * patch_size):
        raise ValueError(f"image_size {image_size} must be a multiple of 2 x patch_size (pixel shuffle 0.5)")
    torch.manual_seed(seed)
    special = [INTERNVL_IMG_START, INTERNVL_IMG_END, INTERNVL_IMG_CONTEXT, "<video>"]
    tokenizer = _tiny_vlm_tokenizer(vocab, special, max_position_embeddings, {"extra_special_tokens": {
        "start_image_token": INTERNVL_IMG_START, "end_image_token": INTERNVL_IMG_END,
        "context_image_token": INTERNVL_IMG_CONTEXT, "video_token": "<video>"}})
    template = chatml_template(INTERNVL_IMG_CONTEXT + "\n")
    tokenizer.chat_template = template
    seq = (image_size // patch_size // 2) ** 2
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=vision_dim, intermediate_size=2 * vision_dim, num_hidden_layers=vision_layers,
            num_attention_heads=heads, image_size=[image_size, image_size], patch_size=[patch_size, patch_size],
        ),
        text_config=_qwen2_text_config(tokenizer, dim=text_dim, layers=text_layers, heads=heads,
                                       max_position_embeddings=max_position_embeddings),
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_IMG_CONTEXT),
        image_seq_length=seq,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config).eval()
    improc = GotOcr2ImageProcessor(
        size={"height": image_size, "width": image_size}, crop_to_patches=True, min_patches=1, max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    processor = InternVLProcessor(
        image_processor=improc, tokenizer=tokenizer, image_seq_length=seq, chat_template=template,
        video_processor=InternVLVideoProcessor(size={"height": image_size, "width": image_size}),
    )
    return _save_vlm(folder, model, processor, tokenizer)


QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE_PAD, QWEN_VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"


def save_tiny_qwen2_5_vl(
    folder: str | os.PathLike,
    *,
    vocab: Sequence[str] | None = None,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    vision_dim: int = 32,
    vision_layers: int = 2,
    text_dim: int = 32,
    text_layers: int = 2,
    heads: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny random Qwen2_5_VLForConditionalGeneration (14 px patches, temporal patch 2,
    2 x 2 merge, windowed ViT, M-RoPE LM) with a Qwen2_5_VLProcessor (smart resize to multiples
    of 28 within [`min_pixels`, `max_pixels`])."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(seed)
    special = [QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE_PAD, QWEN_VIDEO_PAD]
    tokenizer = _tiny_vlm_tokenizer(vocab, special, max_position_embeddings,
                                    {"extra_special_tokens": {"image_token": QWEN_IMAGE_PAD, "video_token": QWEN_VIDEO_PAD}})
    template = chatml_template(QWEN_VISION_START + QWEN_IMAGE_PAD + QWEN_VISION_END)
    tokenizer.chat_template = template
    head_dim = text_dim // heads
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # the real split is 16/24/24 of 64
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    text = _qwen2_text_config(tokenizer, dim=text_dim, layers=text_layers, heads=heads, max_position_embeddings=max_position_embeddings,
                              rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope})
    text_dict = text.to_dict()
    text_dict.pop("model_type", None)
    config = Qwen2_5_VLConfig(
        text_config=text_dict,
        vision_config={
            "depth": vision_layers, "hidden_size": vision_dim, "intermediate_size": 2 * vision_dim, "num_heads": heads,
            "out_hidden_size": text_dim, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 56, "fullatt_block_indexes": [vision_layers - 1],
        },
        image_token_id=ids[QWEN_IMAGE_PAD], video_token_id=ids[QWEN_VIDEO_PAD],
        vision_start_token_id=ids[QWEN_VISION_START], vision_end_token_id=ids[QWEN_VISION_END],
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size), chat_template=template,
    )
    return _save_vlm(folder, model, processor, tokenizer)
