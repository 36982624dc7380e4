"""A judge run locally with transformers (e.g. Qwen2.5-VL-72B-Instruct, GEdit-Bench's open judge):
AutoModelForImageTextToText + AutoProcessor, the model's own chat template, greedy decoding with
the seed reset before every request (as the official Qwen2.5-VL judge does, seed 42).
Requests run one at a time; `device_map: auto` spreads a large model over the visible GPUs.
The model is loaded on the first request, so an evaluation answered from the cache never loads it;
`preflight()` only checks that its config can be read.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.judges.base import JudgeError, JudgeFatalError, JudgeReply, JudgeRequest
from harness.config import nohash
from harness.registry import JUDGES, Spec


@dataclass
class LocalVLMJudgeConfig:
    name: str = "local_vlm"
    model: str = ""  # folder saved with save_pretrained (or a hub id already in the local HF cache)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_new_tokens: int = 512
    seed: int = 42  # pass p of a question uses seed + p
    # Independent replies per question, averaged (greedy decoding repeats itself: useful only with sampling).
    passes: int = field(default=1, metadata={"hash": "unless_default"})
    images_first: bool = True  # the official Qwen2.5-VL judge puts the images before the text
    device: str = nohash("auto", help="auto | cpu | cuda | cuda:N (ignored when device_map is set)")
    device_map: str = nohash("", help="e.g. 'auto' to shard a large judge over all visible GPUs")
    parse_retries: int = nohash(0, help="greedy decoding repeats itself: asking again rarely helps")
    retry_failed: bool = nohash(False)
    cache_dir: str = nohash("")

    def validate(self) -> None:
        if not self.model:
            raise ValueError("judge.model must be set to the judge's folder (or hub id in the local cache)")
        if self.max_new_tokens < 1:
            raise ValueError(f"judge.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.passes < 1:
            raise ValueError(f"judge.passes must be >= 1, got {self.passes}")


class LocalVLMJudge:
    backend = "local_vlm"
    concurrency = 1

    def __init__(self, cfg: LocalVLMJudgeConfig):
        self.cfg = cfg
        self.model = cfg.model
        self._lock = threading.Lock()
        self.net = None

    def preflight(self) -> int:
        """The judge's config can be read (no weights are loaded, no request is made)."""
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(self.cfg.model)
        except (OSError, ValueError) as e:
            raise JudgeFatalError(f"judge.model: cannot load a transformers VLM from {self.cfg.model!r}: "
                                  f"{' '.join(str(e).split())[:300]}") from None
        return 0

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        cfg = self.cfg
        dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[cfg.dtype]
        kwargs: dict[str, Any] = {"dtype": dtype}
        if cfg.device_map:
            kwargs["device_map"] = cfg.device_map
        try:
            self.processor = AutoProcessor.from_pretrained(cfg.model)
            net = AutoModelForImageTextToText.from_pretrained(cfg.model, **kwargs).eval()
        except (OSError, ValueError) as e:
            raise JudgeFatalError(f"judge.model: cannot load a transformers VLM from {cfg.model!r}: {e}") from e
        if not cfg.device_map:
            device = cfg.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            net.to(device)
        self.device = next(net.parameters()).device
        self.net = net

    def identity(self) -> dict[str, Any]:
        c = self.cfg
        return {"backend": self.backend, "model": c.model, "dtype": c.dtype, "decoding": "greedy",
                "max_new_tokens": c.max_new_tokens, "seed": c.seed, "images_first": c.images_first}

    def complete(self, request: JudgeRequest, pass_index: int = 0) -> JudgeReply:
        import torch

        images = [{"type": "image"} for _ in request.images]
        text = [{"type": "text", "text": request.prompt}]
        messages = [{"role": "user", "content": images + text if self.cfg.images_first else text + images}]
        with self._lock, torch.inference_mode():
            if self.net is None:
                self._load()
            try:
                prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                inputs = self.processor(text=[prompt], images=[im.convert("RGB") for im in request.images] or None,
                                        return_tensors="pt").to(self.device, dtype=self.net.dtype)
                torch.manual_seed(self.cfg.seed + pass_index)
                out = self.net.generate(**inputs, do_sample=False, max_new_tokens=self.cfg.max_new_tokens)
            except (RuntimeError, ValueError) as e:  # e.g. out of memory on one very large image
                raise JudgeError(f"local judge failed: {e}") from e
            new = out[:, inputs["input_ids"].shape[1]:]
            reply = self.processor.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
        return JudgeReply(text=reply, model_version=None)


JUDGES.register("local_vlm", Spec(config=LocalVLMJudgeConfig, build=LocalVLMJudge,
                                  help="a transformers VLM run locally (greedy, seed 42)"))
