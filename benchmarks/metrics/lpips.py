"""LPIPS (Zhang et al., 2018) from the `lpips` package, loaded without any download.

The package ships its linear heads, but the backbone comes from torchvision's pretrained weights,
which must already be in the torch hub cache (`$TORCH_HOME/hub/checkpoints`). Without them the
metric does not exist: `load_lpips` raises, unless the caller accepts a randomly initialised backbone
(e.g. as a training loss in a test), which the returned module then reports.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch


class LpipsWeightsMissing(FileNotFoundError):
    pass


def _backbone_url(net: str) -> str:
    from torchvision import models

    weights = {
        "alex": models.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": models.VGG16_Weights.IMAGENET1K_V1,
        "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }
    if net not in weights:
        raise ValueError(f"LPIPS net {net!r} is not known; allowed: {', '.join(weights)}")
    return weights[net].url


def backbone_weights_path(net: str = "alex") -> Path:
    """Where torchvision looks for the pretrained backbone that LPIPS(net) needs."""
    url = _backbone_url(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_lpips(net: str = "alex", allow_random: bool = False) -> torch.nn.Module:
    """A frozen, eval-mode `lpips.LPIPS(net)`; inputs are RGB tensors in [-1, 1], (N, 3, H, W).

    The module's `backbone_pretrained` attribute says whether the backbone has its pretrained
    weights (True) or is randomly initialised (False, only with allow_random=True).
    """
    path = backbone_weights_path(net)
    pretrained = path.exists()
    if not pretrained and not allow_random:
        raise LpipsWeightsMissing(
            f"LPIPS({net!r}) needs torchvision's pretrained backbone at {path}, which is not there and "
            f"cannot be downloaded here. Copy it from {_backbone_url(net)} to that path (or point TORCH_HOME "
            f"at a cache that has it), or pass allow_random=True for a randomly initialised backbone "
            f"(then it is not the LPIPS metric)."
        )
    if not pretrained:
        warnings.warn(f"LPIPS({net!r}): pretrained backbone not found at {path}; using a RANDOMLY "
                      f"initialised backbone (not the LPIPS metric)", stacklevel=2)
    import lpips

    with warnings.catch_warnings():  # torchvision's deprecation notice for lpips' `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=not pretrained, verbose=False)
    model.eval().requires_grad_(False)
    model.backbone_pretrained = pretrained
    return model
