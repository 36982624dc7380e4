"""Will it fit, and how long: memory and FLOPs of a run per GPU, before it is queued.

    python -m harness.plan configs/paper/np_edit.yaml --gpus 4 --gpu-mem 80
    python -m harness.plan configs/paper/np_edit.yaml model.backbone.lora_rank=32 data.batch_size=4
    python -m harness.plan configs/toy/np_edit.yaml --gpus 1 --gpu-mem 8

How: every model of the run is built from its real configuration (harness.models.archs: the config
files of a local folder, or configs/models/json/ for a hub id) on PyTorch's meta device, its tensors
are made fake (torch's FakeTensor: shapes and dtypes, no memory), and the method's own `train_step`
runs once on them, with batches of the config's size and resolution: the same code, passes, autocast
copies and shapes as training. Meanwhile a dispatch mode counts FLOPs with torch.utils.flop_counter's
formulas (by pass and by model, forward and backward) and follows the bytes of every tensor alive,
so the peak is that of the step itself: weights, gradients and Adam states of the steady state,
activations kept for the backward pass, autocast copies of fp32 weights, temporaries.

What it cannot trace is added by rule and said in the output: FSDP sharding over N GPUs (G, A and the
teacher's weights, gradients and Adam states / N, plus two all-gathered blocks), and a reserve for
the CUDA context, workspaces and allocator fragmentation. NP-Edit's n_aux auxiliary updates are
traced once and counted n_aux times (each is the same computation); its 2-step unroll phase is the one
traced (the single-step phase costs less). Time per iteration = FLOPs / (GPU peak x MFU).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import math
import sys
import tempfile
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils import flop_counter as fc
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness import config as C
from harness.models import archs

GiB = 1024**3
aten = torch.ops.aten
LABEL = "plan_label"  # autograd-node metadata key: the model whose forward made the node

# The paper's budget (Sec. 5 / App. E): 4 A100s for 2.5 days, 10K iterations at batch 32.
PAPER_GPUS, PAPER_DAYS, PAPER_ITERS, PAPER_BATCH = 4, 2.5, 10_000, 32
PAPER_GPU_SECONDS_PER_ITER = PAPER_GPUS * PAPER_DAYS * 86400 / PAPER_ITERS  # 86.4 A100-seconds
A100_BF16_TFLOPS = 312.0


# ---------------------------------------------------------------------------------------------
# FLOP formulas: torch.utils.flop_counter's, plus CPU flash attention (torch counts the CUDA kernels only)


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}
FLOP_FORMULAS = {**fc.flop_registry, **{k: fc.shape_wrapper(v) for k, v in CPU_ATTENTION_FLOPS.items()}}


def flop_counter() -> fc.FlopCounterMode:
    """torch's FlopCounterMode counting what the planner counts (attention on CPU too): for measurements."""
    return fc.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


# ---------------------------------------------------------------------------------------------
# Fake tensors


class FakeWorld:
    """One FakeTensorMode whose tensors stand for those of a run on one device. Modules are built on
    the meta device and converted in place; small tensors the code makes itself (token ids, masks,
    noise) stay real, and ops mixing them with fake ones give fake results."""

    def __init__(self) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.device = torch.device("cpu")
        self._memo: dict[int, torch.Tensor] = {}

    def fake(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor):
            return t
        key = id(t)
        if key not in self._memo:
            if t.device.type == "meta":
                f = FakeTensor(self.mode, t.detach(), self.device)
            else:
                f = self.mode.from_tensor(t.detach())
            if isinstance(t, nn.Parameter):
                f = nn.Parameter(f, requires_grad=t.requires_grad)
            self._memo[key] = f
            self._memo[id(f)] = f
            self._keep = getattr(self, "_keep", [])
            self._keep.append(t)  # ids stay unique while the originals live
        return self._memo[key]

    def convert(self, module: nn.Module | None) -> nn.Module | None:
        """Replace every parameter and buffer of `module` by its fake counterpart (shared ones stay shared)."""
        if module is None:
            return None
        for sub in module.modules():
            for k, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[k] = self.fake(p)
            for k, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[k] = self.fake(b)
        return module

    def zeros(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        with self.mode:
            return torch.zeros(*shape, dtype=dtype)


def _stand_in_scalar(t: torch.Tensor) -> Any:
    """What `.item()` of a fake tensor gives: values never steer shapes here (losses, norms, metrics)."""
    if t.dtype == torch.bool:
        return False
    return 0.5 if t.dtype.is_floating_point else 1


def _fake_tolist(t: torch.Tensor) -> Any:
    """`.tolist()` of a fake tensor: stand-in scalars in its shape (FakeTensor has no data to read)."""
    out: Any = _stand_in_scalar(t)
    for n in reversed(t.shape):
        out = [copy.deepcopy(out) for _ in range(n)]
    return out


# ---------------------------------------------------------------------------------------------
# Counting FLOPs and bytes


class Tracer(TorchDispatchMode):
    """Counts FLOPs by (section, model label, forward/backward) and follows the bytes of every tensor
    storage alive (registered ones, and every one an op makes while active), with the peak and what
    made it up. Labels come from a stack (`labelled`) in forward, and from the autograd node being run
    in backward (tagged with its forward label by `NodeTagger`)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[tuple[str, str, str], int] = defaultdict(int)
        self.labels: list[str] = []
        self.section = "step"
        self.live: dict[int, tuple[int, str]] = {}
        self.cur = 0
        self.parts: dict[str, int] = defaultdict(int)
        self.peak = 0
        self.peak_section = ""
        self.peak_parts: dict[str, int] = {}
        self.section_peak: dict[str, int] = defaultdict(int)
        self.snapshots: dict[str, dict[str, int]] = {}

    def label(self) -> str:
        return self.labels[-1] if self.labels else "other"

    def track(self, t: torch.Tensor, category: str) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        n = st.nbytes()
        self.live[key] = (n, category)
        self.cur += n
        self.parts[category] += n
        weakref.finalize(st, self._free, key)
        if self.cur > self.peak:
            self.peak, self.peak_section = self.cur, self.section
            self.peak_parts = {k: v for k, v in self.parts.items() if v}
        if self.cur > self.section_peak[self.section]:
            self.section_peak[self.section] = self.cur

    def _free(self, key: int) -> None:
        n, category = self.live.pop(key, (0, ""))
        self.cur -= n
        self.parts[category] -= n

    def snapshot(self, name: str) -> None:
        """What is alive at the first entry to a section (with train.grad_accum, the first micro-batch's)."""
        self.snapshots.setdefault(name, {k: v for k, v in self.parts.items() if v})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and isinstance(args[0], FakeTensor):
            return _stand_in_scalar(args[0])
        packet = func._overloadpacket
        if packet not in FLOP_FORMULAS and func is not torch.ops.prim.device.default:
            with self:  # as FlopCounterMode: count what a composite op decomposes into
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        node = torch._C._current_autograd_node()
        phase = "bwd" if node is not None else "fwd"
        label = node.metadata.get(LABEL, "other") if node is not None else self.label()
        if packet in FLOP_FORMULAS:
            self.flops[(self.section, label, phase)] += FLOP_FORMULAS[packet](*args, **kwargs, out_val=out)
        kind = "cast" if packet is aten._to_copy and isinstance(args[0], nn.Parameter) else ("grad" if phase == "bwd" else "act")
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.track(t, f"{kind}:{label}")
        return out


class NodeTagger(TorchFunctionMode):
    """Tags every autograd node made under a label with it (walking up to the nodes already tagged),
    so that backward ops can be attributed to the model whose forward made them."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        label = self.tracer.label()
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                _tag(t.grad_fn, label)
        return out


def _tag(node: Any, label: str) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None or LABEL in n.metadata:
            continue
        n.metadata[LABEL] = label
        stack.extend(f for f, _ in n.next_functions)


@contextlib.contextmanager
def labelled(tracer: Tracer, label: str) -> Iterator[None]:
    tracer.labels.append(label)
    try:
        yield
    finally:
        tracer.labels.pop()


def label_calls(tracer: Tracer, obj: Any, method: str, label: str) -> None:
    """Run `obj.method` under `label` (an instance attribute wrapping the bound method)."""
    orig = getattr(obj, method)

    @functools.wraps(orig)
    def wrapped(*args, **kwargs):
        with labelled(tracer, label):
            return orig(*args, **kwargs)

    setattr(obj, method, wrapped)


def label_module(tracer: Tracer, module: nn.Module, label: str) -> None:
    def push(mod, args):
        tracer.labels.append(label)

    def pop(mod, args, out):
        tracer.labels.pop()

    module.register_forward_pre_hook(push)
    module.register_forward_hook(pop)


class SectionRecorder:
    """Stands in for a method's `prof` (harness.profiling.Sections): names the section being traced."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.enabled = True

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        before = self.tracer.section
        self.tracer.section = name
        self.tracer.snapshot(f"start:{name}")
        try:
            yield
        finally:
            self.tracer.section = before


# ---------------------------------------------------------------------------------------------
# The run's models, built from their architectures


def toy_folder(section: Any, kind: str) -> Path:
    """The built-in model's folder (shipped or cached), or, when the current recipe's model is not
    built yet, its untrained initial folder (the same architecture) in a temporary folder."""
    from harness.toyworld import assets
    from harness.toyworld.pretrain import recipe_hash

    name, recipe = assets._builtin(section)
    found = assets.locate_hash(name, section.recipe or recipe_hash(recipe))
    if found is not None:
        return found
    tmp = Path(tempfile.mkdtemp(prefix="plan-toy-")) / name
    if kind == "backbone":
        from harness.toyworld.teacher import build_initial_folder
    else:
        from harness.toyworld.critics import build_initial_folder
    return build_initial_folder(tmp, recipe)


def build_backbone(section: Any, world: FakeWorld) -> Any:
    """The backbone class a config names, built from its architecture on meta with fake tensors. The
    teacher (frozen denoiser) shares its transformer; trainable denoisers are copies made on meta
    (LoRA, dtype, checkpointing as the backbone makes them), then made fake."""
    from harness.models.flux import FluxBackbone
    from harness.models.sd3 import SD3Backbone, SD3Config, SD3Denoiser

    if section.name == "toy_mmdit":
        path = section.path or str(toy_folder(section, "backbone"))
        plain = {f.name: getattr(section, f.name) for f in dataclasses.fields(SD3Config)}
        section, cls = SD3Config(**{**plain, "path": path}), SD3Backbone
    elif section.name == "sd3":
        cls = SD3Backbone
    elif section.name == "flux":
        cls = FluxBackbone
    else:
        raise archs.ArchError(f"model.backbone.name: the planner knows sd3, flux and toy_mmdit, not {section.name!r}")
    arch = archs.pipeline_arch(section.path)
    with torch.device("meta"), archs.pipeline_loading(arch):
        bb = cls(section, device="meta")
    meta_tr = bb.transformer
    bb.transformer = world.convert(copy.deepcopy(meta_tr))
    for m in [*getattr(bb, "clip_encoders", []), getattr(bb, "clip", None), bb.t5, bb.vae]:
        world.convert(m)
    bb.device = world.device
    make = type(bb).make_denoiser
    latent = bb.latent_shape()

    def make_denoiser(*, trainable: bool, lora: bool | None = None):
        if trainable:
            fake_tr, bb.transformer = bb.transformer, meta_tr
            try:
                with torch.device("meta"):
                    den = make(bb, trainable=True, lora=lora)
            finally:
                bb.transformer = fake_tr
            world.convert(den)
        else:
            den = make(bb, trainable=False)
        if isinstance(den, SD3Denoiser):  # reference positions: read from the pretrained sin-cos buffer's values
            hw = tuple(latent[1:])
            n_ref = (hw[0] // den.transformer.config.patch_size) * (hw[1] // den.transformer.config.patch_size)
            width = den.transformer.pos_embed.pos_embed.shape[-1]
            den._pos_cache[(hw, hw, world.device)] = world.zeros(1, n_ref, width)
        return den

    bb.make_denoiser = make_denoiser
    return bb


def critic_vocabulary() -> list[str]:
    from methods.questions import CUSTOMIZATION_CONTEXT, CUSTOMIZATION_IDENTITY, EDIT_VERIFICATION, IDENTITY_PRESERVATION, REMOVAL

    return [EDIT_VERIFICATION, IDENTITY_PRESERVATION, REMOVAL, CUSTOMIZATION_CONTEXT, CUSTOMIZATION_IDENTITY,
            *PlanData.INSTRUCTIONS.values(), "Yes", "No", "yes", "no"]


def build_critic(section: Any, world: FakeWorld) -> Any:
    """The critic a config names: its transformers model from its architecture (meta, then fake),
    frozen as the loader freezes it, its processor (the folder's, or the real image processor with a
    word-level tokenizer), behind the same VLMCritic and layout classes."""
    from harness.models.critic import DTYPES, VLMCritic, freeze

    name = section.name
    path = str(toy_folder(section, "critic")) if name == "toy_llava" else section.path
    arch = archs.vlm_arch(path)
    processor, ids = archs.vlm_processor(name, arch, critic_vocabulary())
    config = archs.vlm_config(name, arch, token_ids=ids)
    attn = getattr(section, "attn_implementation", "")
    if attn:
        config._attn_implementation = attn
    with torch.device("meta"):
        model = archs.build_vlm(name, config, DTYPES[section.dtype])
    freeze(model, grad_checkpointing=section.grad_checkpointing)
    world.convert(model)
    quantize = getattr(section, "quantize", False)
    if name in ("llava", "toy_llava"):
        from harness.models.llava import LlavaLayout
        layout = LlavaLayout(model, processor, quantize=quantize)
    elif name == "llava_onevision":
        from harness.models.llava_onevision import LlavaOnevisionLayout
        layout = LlavaOnevisionLayout(model, processor, quantize=quantize)
    elif name == "internvl":
        from harness.models.internvl import InternVLLayout
        layout = InternVLLayout(model, processor, max_tiles=section.max_tiles, quantize=quantize)
    else:
        from harness.models.qwen_vl import QwenVLLayout
        layout = QwenVLLayout(model, processor, min_pixels=section.min_pixels, max_pixels=section.max_pixels, quantize=quantize)
    return VLMCritic(layout, name=f"{name}:{path}")


# ---------------------------------------------------------------------------------------------
# Batches


class PlanData:
    """Stands in for InstructionData (same constructor and `sample`): batches of the run's size with
    ceil(B x p_remove) removal edits (one question about the edited image alone, which some critics
    encode with more image tokens) and local edits for the rest (two questions about both images).
    Prompts carry a number drawn from the batch's generator: a pure function of (seed, step, stream) as
    real batches are, and new in (almost) every batch, so text embeddings are computed, not cached.
    `tensor(*shape)` makes the images (zeros; the planner's are fake)."""

    INSTRUCTIONS = {"color": "change the color of the car to red", "remove": "remove the dog from the sofa"}
    tensor: Callable[..., torch.Tensor] = staticmethod(torch.zeros)

    def __init__(self, folder: Any = None, *, image_size: int, fraction: float = 1.0, seed: int = 0,
                 edit_types: list[str] | None = None, type_probs: dict[str, float] | None = None,
                 cache_images: bool = True, paired: bool = False):
        from harness.data.sampling import type_distribution

        types = list(edit_types or ["color", "remove"])
        self.local = next((t for t in types if t != "remove"), None)
        self.p_remove = type_distribution(types, type_probs or {}).get("remove", 0.0) if "remove" in types else 0.0
        if self.local is None:
            self.p_remove = 1.0
        self.image_size, self.paired = image_size, paired
        self.types = sorted({self.local or "remove", *(["remove"] if self.p_remove else [])})

    def records(self, n: int, draw: int) -> list:
        from harness.data.instructions import InstructionRecord, PairedRecord

        n_remove = min(n, math.ceil(n * self.p_remove - 1e-9))
        out = []
        for i in range(n):
            kind = "remove" if i < n_remove else self.local
            tag = f"{draw}-{i}"
            words = dict(instruction=f"{self.INSTRUCTIONS.get(kind, self.INSTRUCTIONS['color'])} {tag}", edit_type=kind,
                         caption_ref=f"a dog on a sofa next to a car {tag}", caption_edit=f"a sofa next to a red car {tag}",
                         object="dog")
            if self.paired:
                out.append(PairedRecord(id=tag, image=f"{tag}.png", target=f"{tag}-target.png", **words))
            else:
                out.append(InstructionRecord(id=tag, image=f"{tag}.png", **words))
        return out

    def sample(self, n: int, generator: torch.Generator):
        from harness.data.sampling import Batch

        recs = self.records(n, int(torch.randint(1 << 30, (1,), generator=generator)))
        shape = (n, 3, self.image_size, self.image_size)
        return Batch(recs, self.tensor(*shape), self.tensor(*shape) if self.paired else None)


# ---------------------------------------------------------------------------------------------
# Building a method around the planned models


class _Registry:
    def __init__(self, build: Callable[[Any], Any]):
        self._build = build

    def get(self, name: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(build=lambda section, device=None: self._build(section))


@contextlib.contextmanager
def method_on(backbone: Callable[[Any], Any], critic: Callable[[Any], Any], data: type = PlanData) -> Iterator[None]:
    """While active, methods built from a config get their backbone from `backbone(section)`, their
    critic from `critic(section)` and their batches from `data` (an InstructionData stand-in); runs
    they start from (train.init_from) are not read."""
    from harness.registry import load_builtins
    from methods import common

    load_builtins()  # the method modules, so that their names can be patched
    patches = [
        mock.patch.object(common, "build_backbone", lambda cfg, device: backbone(cfg.model.backbone)),
        mock.patch.object(common, "build_critic", lambda cfg, device: critic(cfg.model.critic)),
        mock.patch.object(common, "resolve_data_path", lambda path, cfg, paired: Path(str(path))),
        mock.patch.object(common, "load_init", lambda *a, **k: None),
        mock.patch.object(common, "load_init_base", lambda *a, **k: None),
    ]
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] == "methods" and mod is not None:
            if hasattr(mod, "InstructionData"):
                patches.append(mock.patch.object(mod, "InstructionData", data))
            if hasattr(mod, "BACKBONES"):
                patches.append(mock.patch.object(mod, "BACKBONES", _Registry(backbone)))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def planned_config(cfg: Any) -> Any:
    """The run config the planner traces: NP-Edit with one auxiliary update (counted n_aux times),
    rewards computed in this thread and read as Yes/No probabilities (the score reward generates text,
    whose length the planner cannot know), LPIPS without pretrained weights (same architecture)."""
    cfg = copy.deepcopy(cfg)
    m = cfg.method
    if hasattr(m, "n_aux"):
        m.n_aux = min(m.n_aux, 1)
    if hasattr(m, "reward_overlap"):
        m.reward_overlap = False
        if m.reward in ("auto", "score"):
            m.reward = "yes_no"
    if hasattr(m, "lpips_allow_random"):
        m.lpips_allow_random = True
    return cfg


def planned_step(cfg: Any) -> tuple[int, str]:
    """The step the planner traces and its phase: NP-Edit's main step with the 2-step unroll (or the
    single step when the run never gets there); step 0 for the others."""
    m = cfg.method
    if hasattr(m, "single_step_steps"):
        two = m.warmup_steps + m.single_step_steps
        if two < cfg.train.steps:
            return two, "main step, 2-step unroll"
        return m.warmup_steps, "main step, single-step unroll"
    return 0, "step"


def build_method(cfg: Any, backbone: Callable[[Any], Any], critic: Callable[[Any], Any], device: torch.device,
                 data: type = PlanData) -> Any:
    """`cfg`'s method as training builds it (METHODS registry), with the given models and batches."""
    from harness.registry import METHODS
    from harness.runstore import RunDir

    with method_on(backbone, critic, data), tempfile.TemporaryDirectory() as tmp:
        return METHODS.get(cfg.method.name).build(cfg, RunDir(Path(tmp) / "run"), device)


def optimizers(m: Any) -> dict[str, torch.optim.Optimizer]:
    return {k: v for k, v in vars(m).items() if isinstance(v, torch.optim.Optimizer)}


def prepare_steady_state(m: Any) -> None:
    """Make the method look as it does after its first iteration: gradients and Adam states exist
    (zero: the Adam update of a zero gradient is zero, so weights do not change), and the empty
    prompt's embedding (classifier-free guidance) is cached."""
    for opt in optimizers(m).values():
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        opt.step()
    if getattr(m, "uncond", False) is None and hasattr(getattr(m, "backbone", None), "encode_text"):
        with torch.no_grad():
            m.uncond = m.backbone.encode_text([""])


ROLE_NAMES = {"G": "G (generator)", "A": "A (auxiliary)", "teacher": "teacher", "critic": "critic", "ema": "EMA of G",
              "lpips": "LPIPS"}


def roles(m: Any) -> dict[str, list[Any]]:
    """The run's models by role, with the optimizer of each trainable one: {role: [module, optimizer]}."""
    bb = getattr(m, "backbone", None)
    out: dict[str, list[Any]] = {}
    opts = optimizers(m)
    for attr in ("G", "A", "teacher"):
        mod = getattr(m, attr, None)
        if isinstance(mod, nn.Module):
            opt = opts.get(f"opt_{attr}") or (opts.get("opt") if attr == "G" else None)
            out[ROLE_NAMES[attr]] = [mod, opt]
    if bb is not None:
        teacher = getattr(m, "teacher", None)
        if teacher is None or getattr(teacher, "transformer", None) is not bb.transformer:
            out["base transformer (kept by the backbone)"] = [bb.transformer, None]
        out["text encoders"] = [nn.ModuleList([e for e in [*getattr(bb, "clip_encoders", []), getattr(bb, "clip", None), bb.t5]
                                               if e is not None]), None]
        if bb.vae is not None:
            out["VAE"] = [bb.vae, None]
    critic = getattr(m, "critic", None)
    if critic is not None:
        out["critic"] = [critic.model, None]
    if getattr(m, "lpips", None) is not None:
        out["LPIPS"] = [m.lpips, None]
    return out


# ---------------------------------------------------------------------------------------------
# Tracing one step


@dataclass
class Trace:
    """One training step of a run, traced on fake tensors (bytes are those of one process)."""

    step: int
    phase: str
    flops: dict[tuple[str, str, str], int]  # (section, model, fwd|bwd) -> FLOPs (NP-Edit's aux updates x n_aux)
    params: dict[str, tuple[int, int]]  # role -> (trainable, frozen)
    static: dict[tuple[str, str], int]  # (role, weights|grads|optimizer) -> bytes
    peak: int
    peak_section: str
    peak_parts: dict[str, int]  # what was alive at the peak: 'weights:<role>', 'act:<model>', 'cast:<model>', ...
    section_peaks: dict[str, int]
    retained: dict[str, int]  # alive when the backward pass starts (NP-Edit), by kind:model
    block_bytes: int  # the largest transformer block in the compute dtype (FSDP gathers one at a time)
    grad_checkpointing: bool
    n_aux: int = 0

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())


def _block_bytes(bb: Any) -> int:
    tr = getattr(bb, "transformer", None)
    blocks = [b for name in ("transformer_blocks", "single_transformer_blocks") for b in getattr(tr, name, [])]
    size = torch.empty((), dtype=getattr(bb, "dtype", torch.float32)).element_size()
    return max((sum(p.numel() for p in b.parameters()) * size for b in blocks), default=0)


def trace_step(cfg: Any) -> Trace:
    """Build `cfg`'s method on fake tensors and trace one training step (see the module docstring)."""
    world = FakeWorld()
    n_aux = getattr(cfg.method, "n_aux", 0)
    tcfg = planned_config(cfg)
    step, phase = planned_step(tcfg)
    made: dict[int, Any] = {}

    def once(key: str, section: Any, build: Callable[[Any, FakeWorld], Any]) -> Any:
        k = (key, C.config_hash(section, 16) if dataclasses.is_dataclass(section) else id(section))
        if k not in made:
            made[k] = build(section, world)
        return made[k]

    data = type("FakeData", (PlanData,), {"tensor": staticmethod(lambda *shape: world.zeros(*shape))})
    m = build_method(tcfg, lambda s: once("backbone", s, build_backbone), lambda s: once("critic", s, build_critic),
                     world.device, data)
    for attr, value in list(vars(m).items()):  # anything else the method made for itself (LPIPS, ...)
        if isinstance(value, nn.Module):
            world.convert(value)
    prepare_steady_state(m)

    tracer = Tracer()
    by_role = roles(m)
    params: dict[str, tuple[int, int]] = {}
    static: dict[tuple[str, str], int] = defaultdict(int)
    seen: set[int] = set()
    for role, (module, opt) in by_role.items():
        trainable = frozen = 0
        for p in module.parameters():
            key = p.untyped_storage()._cdata
            if key in seen:
                continue
            seen.add(key)
            trainable += p.numel() * p.requires_grad
            frozen += p.numel() * (not p.requires_grad)
        params[role] = (trainable, frozen)
        for t in [*module.parameters(), *module.buffers()]:
            before = tracer.cur
            tracer.track(t, f"weights:{role}")
            static[(role, "weights")] += tracer.cur - before
        for p in module.parameters():
            if p.grad is not None:
                before = tracer.cur
                tracer.track(p.grad, f"grads:{role}")
                static[(role, "grads")] += tracer.cur - before
        if opt is not None:
            for state in opt.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor) and isinstance(v, FakeTensor):
                        before = tracer.cur
                        tracer.track(v, f"optimizer:{role}")
                        static[(role, "optimizer")] += tracer.cur - before
    ema = getattr(m, "ema", None)
    if ema is not None:
        for t in ema.shadow.values():
            before = tracer.cur
            tracer.track(t, "weights:EMA of G")
            static[("EMA of G", "weights")] += tracer.cur - before

    for attr, label in (("G", "G"), ("A", "A"), ("teacher", "teacher"), ("lpips", "LPIPS")):
        if isinstance(getattr(m, attr, None), nn.Module):
            label_module(tracer, getattr(m, attr), label)
    bb = getattr(m, "backbone", None)
    if bb is not None:
        label_calls(tracer, bb, "encode_text", "text encoders")
        label_calls(tracer, bb, "encode_image", "VAE encode")
        label_calls(tracer, bb, "decode", "VAE decode")
    critic = getattr(m, "critic", None)
    if critic is not None:
        label_calls(tracer, critic, "next_token_logits", "critic")
        label_calls(tracer, critic, "generate", "critic")
    if hasattr(m, "prof"):
        m.prof = SectionRecorder(tracer)
    if callable(getattr(m, "reward_fn", None)):  # Flow-GRPO: rewards are computed (traced), their values are fake
        reward_fn = m.reward_fn
        m.reward_fn = lambda edited, refs, records: dataclasses.replace(reward_fn(edited, refs, records),
                                                                        values=torch.zeros(len(records)))
    for method in ("rollout", "_reward_job", "_update"):  # Flow-GRPO's parts
        if callable(getattr(m, method, None)):
            section = {"rollout": "rollouts", "_reward_job": "rewards", "_update": "policy updates"}[method]
            orig = getattr(m, method)
            setattr(m, method, functools.partial(_in_section, tracer, section, orig))

    with tracer, NodeTagger(tracer), mock.patch.object(FakeTensor, "tolist", _fake_tolist, create=True):
        m.train_step(step)

    flops = dict(tracer.flops)
    if n_aux != min(n_aux, 1):
        flops = {k: v * n_aux if k[0] == "aux_updates" else v for k, v in flops.items()}
    ckpt = bool(getattr(cfg.model.backbone, "grad_checkpointing", False))
    return Trace(step, phase, flops, params, dict(static), tracer.peak, tracer.peak_section, tracer.peak_parts,
                 dict(tracer.section_peak), tracer.snapshots.get("start:backward_and_step", {}), _block_bytes(bb), ckpt, n_aux)


def _in_section(tracer: Tracer, section: str, fn: Callable, *args, **kwargs):
    before = tracer.section
    tracer.section = section
    try:
        return fn(*args, **kwargs)
    finally:
        tracer.section = before


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class Settings:
    gpus: int = 1
    gpu_mem_gib: float = 80.0
    reserve_gib: float = 2.0  # CUDA context, cuBLAS / NCCL workspaces
    fragmentation: float = 0.10  # allocator fragmentation, as a fraction of the traced peak
    gpu_tflops: float = A100_BF16_TFLOPS  # dense bf16 peak of one GPU
    mfu: float = 0.35


@dataclass
class Plan:
    cfg: Any
    settings: Settings
    trace: Trace
    other: Trace | None  # the same run with gradient checkpointing toggled
    sharded: bool
    peak_bytes: int  # per GPU, traced (FSDP applied by rule)
    need_bytes: int  # with the reserve and fragmentation
    fits: bool
    notes: list[str] = field(default_factory=list)
    suggestion: dict[str, Any] | None = None
    suggested: "Plan | None" = None

    @property
    def flops(self) -> int:
        return self.trace.total_flops

    @property
    def seconds_per_iteration(self) -> float:
        s = self.settings
        return self.flops / (s.gpu_tflops * 1e12 * s.mfu)

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.settings.gpus


SHARDED_ROLES = ("G (generator)", "A (auxiliary)", "teacher")


def sharded_peak(trace: Trace, gpus: int) -> int:
    """The per-GPU peak under FSDP over `gpus` ranks: G, A and the teacher keep 1/gpus of their
    weights, gradients and Adam states; their autocast weight copies are not kept for the backward
    pass (FSDP2 gathers bf16 weights per block and frees them); two blocks are gathered at a time.
    The backbone's own transformer stays on the CPU."""
    per_role = defaultdict(int)
    for k, v in trace.peak_parts.items():
        kind, _, role = k.partition(":")
        if role in SHARDED_ROLES and kind in ("weights", "grads", "optimizer"):
            per_role["shardable"] += v
    casts = sum(v for k, v in trace.peak_parts.items() if k.startswith("cast:") and k.split(":", 1)[1] in ("G", "A", "teacher"))
    shardable = per_role["shardable"]
    return trace.peak - shardable - casts + math.ceil(shardable / gpus) + 2 * trace.block_bytes


def _fsdp(cfg: Any) -> bool:
    return bool(getattr(cfg.model.backbone, "fsdp", False))


def toggled_checkpointing(cfg: Any) -> Any:
    cfg = copy.deepcopy(cfg)
    on = not cfg.model.backbone.grad_checkpointing
    cfg.model.backbone.grad_checkpointing = on
    if cfg.model.critic is not None and hasattr(cfg.model.critic, "grad_checkpointing"):
        cfg.model.critic.grad_checkpointing = on
    return cfg


_TRACES: dict[str, Trace] = {}


def traced(cfg: Any) -> Trace:
    """`trace_step(cfg)`, reused for configs with the same run id (within a process)."""
    key = C.config_hash(cfg, 64)
    if key not in _TRACES:
        _TRACES[key] = trace_step(cfg)
    return _TRACES[key]


def make_plan(cfg: Any, settings: Settings | None = None, *, both_checkpointing: bool = True, suggest: bool = True) -> Plan:
    """The plan of run config `cfg` on `settings.gpus` GPUs of `settings.gpu_mem_gib` GiB each."""
    s = settings or Settings()
    trace = traced(cfg)
    other = traced(toggled_checkpointing(cfg)) if both_checkpointing else None
    sharded = _fsdp(cfg) and s.gpus > 1
    peak = sharded_peak(trace, s.gpus) if sharded else trace.peak
    need = int(peak * (1 + s.fragmentation) + s.reserve_gib * GiB)
    notes = []
    if _fsdp(cfg) and s.gpus == 1:
        notes.append("fsdp is on but there is one GPU: nothing is sharded")
    plan = Plan(cfg, s, trace, other, sharded, peak, need, need <= s.gpu_mem_gib * GiB, notes)
    if not plan.fits and suggest:
        plan.suggestion, plan.suggested = suggest_settings(cfg, s)
    return plan


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """`cfg` with dotted overrides (validated as the config loader validates them)."""
    data, keys = C.resolve_dict(C.to_dict(cfg), {k: v for k, v in overrides.items() if k != "--gpus"}, "suggestion")
    return C.from_dict(type(cfg), data, "<plan suggestion>", keys)


def candidate_changes(cfg: Any, s: Settings) -> list[dict[str, Any]]:
    """Changes that lower memory, least disruptive first; applied cumulatively."""
    b, c, m = cfg.model.backbone, cfg.model.critic, cfg.method
    out: list[dict[str, Any]] = []
    ckpt = {}
    if hasattr(b, "grad_checkpointing") and not b.grad_checkpointing:
        ckpt["model.backbone.grad_checkpointing"] = True
    if c is not None and hasattr(c, "grad_checkpointing") and not c.grad_checkpointing:
        ckpt["model.critic.grad_checkpointing"] = True
    if ckpt:
        out.append(ckpt)
    if s.gpus > 1 and hasattr(b, "fsdp") and not b.fsdp:
        out.append({"model.backbone.fsdp": True})
    if hasattr(b, "lora_rank") and not b.lora_rank and not hasattr(m, "group_size"):
        out += [{"model.backbone.lora_rank": r, "model.backbone.lora_alpha": 2.0 * r} for r in (128, 64, 32, 16)]
    if getattr(c, "name", "") == "internvl" and (c.max_tiles == 0 or c.max_tiles > 6):
        out.append({"model.critic.max_tiles": 6})
    if getattr(c, "name", "") == "qwen2_5_vl" and (c.max_pixels == 0 or c.max_pixels > 1024 * 28 * 28):
        out.append({"model.critic.max_pixels": 1024 * 28 * 28})
    batch = cfg.data.batch_size
    if hasattr(m, "group_size"):  # Flow-GRPO: fewer prompts per step
        while batch > 1:
            batch //= 2
            out.append({"data.batch_size": batch})
    else:  # the same batch in smaller micro-batches: the run's recipe is unchanged
        acc = cfg.train.grad_accum
        while batch % (2 * acc) == 0:
            acc *= 2
            out.append({"train.grad_accum": acc})
        if acc < batch:
            out.append({"train.grad_accum": batch})
    if hasattr(b, "fsdp"):
        for g in (2, 4, 8, 16):
            if g > s.gpus:
                out.append({"--gpus": g, "model.backbone.fsdp": True})
    return out


def suggest_settings(cfg: Any, s: Settings) -> tuple[dict[str, Any] | None, Plan | None]:
    """The first cumulative set of `candidate_changes` with which the plan fits, trimmed of the changes
    it does not need (each change that can be undone while it still fits is undone)."""
    def plan_of(changes: dict[str, Any]) -> Plan:
        gs = dataclasses.replace(s, gpus=changes.get("--gpus", s.gpus))
        return make_plan(with_overrides(cfg, changes), gs, both_checkpointing=False, suggest=False)

    applied: dict[str, Any] = {}
    found = None
    for change in candidate_changes(cfg, s):
        applied = {**applied, **change}
        p = plan_of(applied)
        if p.fits:
            found = (dict(applied), p)
            break
    if found is None:
        return None, None
    changes, p = found
    for key in [k for k in list(changes) if k not in ("data.batch_size", "--gpus")]:
        trial = {k: v for k, v in changes.items() if k != key and not (key.endswith("lora_rank") and k.endswith("lora_alpha"))}
        if trial == changes:
            continue
        tp = plan_of(trial)
        if tp.fits:
            changes, p = trial, tp
    return changes, p


# ---------------------------------------------------------------------------------------------
# Report


def _g(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _f(n: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} "


def _p(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


SECTION_NAMES = {"unroll": "unroll (G forward, with grad)", "decode": "decode (VAE decoder)", "vlm_loss": "VLM loss (critic forward)",
                 "dmd": "DMD (teacher with guidance, A forward)", "lpips": "LPIPS", "backward_and_step": "backward + Adam step of G",
                 "aux_updates": "auxiliary updates", "step": "the rest of the step", "rollouts": "rollouts (SDE sampling)",
                 "rewards": "rewards (critic)", "policy updates": "policy updates (forward + backward)"}


def flops_table(trace: Trace) -> list[tuple[str, int]]:
    rows: dict[str, int] = {}
    order = []
    for (section, label, phase), n in trace.flops.items():
        if section not in order:
            order.append(section)
    for section in order:
        for (sec, label, phase), n in sorted(trace.flops.items(), key=lambda kv: -kv[1]):
            if sec == section and n:
                name = SECTION_NAMES.get(section, section)
                if section == "aux_updates":
                    name = f"{trace.n_aux} auxiliary updates"
                rows[f"{name}: {label} {'backward' if phase == 'bwd' else 'forward'}"] = n
    return list(rows.items())


def kept_for_backward(trace: Trace) -> dict[str, int]:
    """Activations (and autocast weight copies) alive when the backward pass starts, by model (>= 1 MiB)."""
    kept: dict[str, int] = defaultdict(int)
    for k, v in trace.retained.items():
        kind, _, who = k.partition(":")
        if kind in ("act", "cast"):
            kept[f"{who}{' (autocast copies of weights)' if kind == 'cast' else ''}"] += v
    return {k: v for k, v in sorted(kept.items(), key=lambda kv: -kv[1]) if v >= 2**20}


def run_flops(plan: Plan) -> tuple[float, str]:
    """FLOPs of the whole run per GPU and how they were counted. NP-Edit: the traced 2-step iteration
    for the 2-step phase; its single-step phase and identity warmup derived from it (G runs once
    instead of twice in the unroll, its backward and the auxiliary updates' unrolls: half of G's share;
    a warmup step is one forward and backward of G)."""
    t, cfg, m = plan.trace, plan.cfg, plan.cfg.method
    total = t.total_flops
    if not hasattr(m, "single_step_steps") or t.phase != "main step, 2-step unroll":
        return total * cfg.train.steps, f"{cfg.train.steps} x the traced step"
    g = lambda sec, ph: t.flops.get((sec, "G", ph), 0)  # noqa: E731
    half = (g("unroll", "fwd") + g("backward_and_step", "bwd") + g("aux_updates", "fwd")) / 2
    single = total - half
    warmup = (g("unroll", "fwd") + g("backward_and_step", "bwd")) / 2
    n_warm = min(m.warmup_steps, cfg.train.steps)
    n_single = min(m.single_step_steps, cfg.train.steps - n_warm)
    n_two = cfg.train.steps - n_warm - n_single
    return (n_warm * warmup + n_single * single + n_two * total,
            f"{n_warm} warmup + {n_single} single-step + {n_two} 2-step iterations ({_f(single)}FLOPs per single-step one)")


def report(plan: Plan) -> str:
    t, s, cfg = plan.trace, plan.settings, plan.cfg
    lines = [f"# plan: {cfg.method.name} on {cfg.model.backbone.name} ({getattr(cfg.model.backbone, 'path', '') or 'built-in'})"
             + (f" + {cfg.model.critic.name} ({getattr(cfg.model.critic, 'path', '') or 'built-in'})" if cfg.model.critic else ""),
             f"# traced: {t.phase} (step {t.step}), batch {cfg.data.batch_size} per GPU"
             f"{f' in {cfg.train.grad_accum} micro-batches' if cfg.train.grad_accum > 1 else ''}, {s.gpus} GPU(s) of {s.gpu_mem_gib:g} GiB"
             + (", FSDP over them" if plan.sharded else "")]
    lines.append("")
    lines.append(f"{'model':<40}{'trainable':>12}{'frozen':>12}{'weights':>12}{'grads':>12}{'Adam':>12}")
    per = defaultdict(dict)
    for (role, kind), v in t.static.items():
        per[role][kind] = v
    for role, (tr, fr) in t.params.items():
        w, g, o = (per[role].get(k, 0) for k in ("weights", "grads", "optimizer"))
        if plan.sharded and role in SHARDED_ROLES:
            w, g, o = (math.ceil(x / s.gpus) for x in (w, g, o))
        lines.append(f"{role:<40}{_p(tr):>12}{_p(fr):>12}{_g(w):>12}{_g(g):>12}{_g(o):>12}")
    if "EMA of G" in per:
        lines.append(f"{'EMA of G':<40}{'':>12}{'':>12}{_g(per['EMA of G']['weights']):>12}")
    if plan.sharded:
        lines.append(f"(FSDP: G, A and the teacher per GPU = 1/{s.gpus}; plus two gathered blocks, {_g(2 * t.block_bytes)})")
    lines.append("")
    lines.append(f"{'FLOPs per iteration, by pass':<64}{'FLOPs':>12}{'share':>8}")
    total = t.total_flops
    for name, n in flops_table(t):
        lines.append(f"{name:<64}{_f(n):>12}{n / max(total, 1):>8.1%}")
    lines.append(f"{'total (per GPU)':<64}{_f(total):>12}")
    lines.append("")
    lines.append("memory per GPU (traced step)")
    act = defaultdict(int)
    for k, v in t.peak_parts.items():
        kind, _, who = k.partition(":")
        act[{"act": "activations", "grad": "made by backward", "cast": "autocast copies of weights",
             "optimizer": "Adam states"}.get(kind, kind)] += v
    lines.append(f"  peak {_g(plan.peak_bytes)} during '{SECTION_NAMES.get(t.peak_section, t.peak_section)}'"
                 + (f" (unsharded {_g(t.peak)})" if plan.sharded else ""))
    lines.append("  at the peak: " + ", ".join(f"{k} {_g(v)}" for k, v in sorted(act.items(), key=lambda kv: -kv[1])))
    pk = lambda tr: sharded_peak(tr, s.gpus) if plan.sharded else tr.peak  # noqa: E731
    for tr in sorted([t] + ([plan.other] if plan.other else []), key=lambda x: not x.grad_checkpointing):
        kept = kept_for_backward(tr)
        lines.append(f"  gradient checkpointing {'on ' if tr.grad_checkpointing else 'off'}"
                     f"{' (as configured)' if tr is t and plan.other else ''}: peak {_g(pk(tr))}, {_f(tr.total_flops)}FLOPs"
                     + ("; kept for the backward pass: " + ", ".join(f"{k} {_g(v)}" for k, v in kept.items()) if kept else ""))
    lines.append(f"  needed with a {s.reserve_gib:g} GiB reserve and {s.fragmentation:.0%} fragmentation: {_g(plan.need_bytes)} "
                 f"of {s.gpu_mem_gib:g} GiB: {'FITS' if plan.fits else 'DOES NOT FIT'}")
    for n in plan.notes:
        lines.append(f"  note: {n}")
    if not plan.fits:
        if plan.suggestion is None:
            lines.append("  no change the planner tries makes it fit (see candidate_changes)")
        else:
            txt = " ".join(f"{k}={v}" if not k.startswith("--") else f"{k} {v}" for k, v in plan.suggestion.items())
            sp = plan.suggested
            lines.append(f"  fits with: {txt}  (peak {_g(sp.peak_bytes)}, needs {_g(sp.need_bytes)}"
                         + (f"; global batch {sp.global_batch}" if sp.global_batch != plan.global_batch else "") + ")")
    lines.append("")
    sec = plan.seconds_per_iteration
    gpu_s_per_sample = sec * s.gpus / plan.global_batch
    paper = PAPER_GPU_SECONDS_PER_ITER / PAPER_BATCH
    run, how = run_flops(plan)
    run_h = run / (s.gpu_tflops * 1e12 * s.mfu) / 3600
    lines.append(f"time at {s.mfu:.0%} MFU of {s.gpu_tflops:g} TFLOPS: {sec:.3g} s per iteration "
                 f"(global batch {plan.global_batch} on {s.gpus} GPU(s)), {gpu_s_per_sample:.3g} GPU-s per sample")
    lines.append(f"the run: {how}: {run_h:.3g} h on {s.gpus} GPU(s) ({run_h * s.gpus / 24:.3g} GPU-days)")
    lines.append(f"paper's budget: {PAPER_GPUS} A100s x {PAPER_DAYS} days for {PAPER_ITERS} iterations at batch {PAPER_BATCH} = "
                 f"{PAPER_GPU_SECONDS_PER_ITER:.1f} A100-s per iteration, {paper:.2f} per sample; this run: "
                 f"{gpu_s_per_sample / paper:.3g}x that per sample")
    return "\n".join(lines)


def memory_column(launcher: Any) -> Callable[[Any], str]:
    """For `harness.sweep --dry-run`: a run config's planned peak memory per GPU on the launcher's GPUs
    ('-' for a run the planner cannot build, e.g. a plugin's model: `python -m harness.plan` says why)."""
    from tqdm import tqdm

    gpus = max(1, launcher.gpus_per_node) * max(1, launcher.nodes)
    bar = tqdm(desc="planning runs", unit="run", disable=not sys.stderr.isatty(), leave=False)

    def column(cfg: Any) -> str:
        bar.update(1)
        try:
            plan = make_plan(cfg, Settings(gpus=gpus), both_checkpointing=False, suggest=False)
        except Exception:  # noqa: BLE001  (the table still shows every run)
            return "-"
        return f"{plan.peak_bytes / GiB:.1f} GiB"

    return column


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as harness.train takes them")
    p.add_argument("--gpus", type=int, default=1, help="GPUs of the job (data parallel; FSDP shards over them) (default 1)")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory of one GPU in GiB (default 80: an A100 80GB)")
    p.add_argument("--reserve", type=float, default=2.0, help="GiB per GPU kept for the CUDA context and workspaces (default 2)")
    p.add_argument("--fragmentation", type=float, default=0.10, help="allocator overhead, fraction of the peak (default 0.10)")
    p.add_argument("--gpu-tflops", type=float, default=A100_BF16_TFLOPS, help="dense bf16 TFLOPS of one GPU (default 312: A100)")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation (default 0.35)")
    p.add_argument("--no-suggest", action="store_true", help="do not search for settings that fit")
    args = p.parse_args(argv)
    if args.gpus < 1 or args.gpu_mem <= 0 or not 0 < args.mfu <= 1:
        p.error("--gpus must be >= 1, --gpu-mem > 0 and --mfu in (0, 1]")
    try:
        cfg = C.load_run_config(args.config, args.overrides)
        settings = Settings(args.gpus, args.gpu_mem, args.reserve, args.fragmentation, args.gpu_tflops, args.mfu)
        plan = make_plan(cfg, settings, suggest=not args.no_suggest)
    except (C.ConfigError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(plan))
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
