"""The LPIPS network: the ``lpips`` package's model with real ImageNet backbone weights.

Where the weights come from (never random ones) is :mod:`orl_gym.lpips_weights`; this module
builds the network around them, and splits the distance into :meth:`LPIPS.features` and
:meth:`LPIPS.distance` so the reward computes a fixed HR image's features once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from orl_gym.lpips_weights import backbone_spec, load_lpips_backbone
from orl_gym.precision import ieee_float32
from orl_gym.rewards.checks import check_image_batch, check_image_values, check_pair

__all__ = ["LPIPS"]


class LPIPS(torch.nn.Module):
    """LPIPS distance per image with the ``lpips`` package's network and real ImageNet weights.

    Args:
        net: backbone, ``"alex"`` (default, as the LPIPS authors recommend for a metric) or
            ``"vgg"``.
        device: where the network lives; inputs must be on the same device.
        weights_path: a backbone state dict (``features.*`` keys) to use instead of the lookup
            described in :mod:`orl_gym.lpips_weights`.
        cache_dir: where :func:`fetch_lpips_weights` cached the converted weights, if not the
            default user cache.

    Raises:
        LPIPSWeightsNotFoundError: no real backbone weights are available; the message names
            ``python -m orl_gym.rewards fetch-weights --net NET``.

    ``forward(sr, hr)`` takes images in ``[0, 1]`` and returns ``(B,)``, identical to
    ``lpips.LPIPS(net=net)(2 * sr - 1, 2 * hr - 1)`` with the same weights. :meth:`features` and
    :meth:`distance` split that computation so a fixed reference's features can be computed once.
    """

    def __init__(
        self,
        net: str = "alex",
        *,
        device: str | torch.device = "cpu",
        weights_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        spec = backbone_spec(net)
        backbone, self.weights_source = load_lpips_backbone(
            spec.net, weights_path=weights_path, cache_dir=cache_dir
        )
        import lpips as lpips_package  # imported here: it pulls in torchvision

        self._normalize_tensor = lpips_package.normalize_tensor
        with warnings.catch_warnings():
            # pnet_rand=True: lpips asks torchvision for an *untrained* backbone (no download);
            # the real weights are loaded below. torchvision warns about the legacy argument.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.model = lpips_package.LPIPS(
                pretrained=True, net=spec.net, version="0.1", pnet_rand=True, verbose=False
            )
        _load_backbone(self.model.net, backbone)
        self.net = spec.net
        self.model.requires_grad_(False)
        # channels_last runs AlexNet/VGG several times faster on CPU (oneDNN) and is neutral on GPU.
        self.model.to(device=device, memory_format=torch.channels_last)
        self.model.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # A metric: the lin layers' dropout must never switch on.
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.scaling_layer.shift.device

    def _scaled(self, images: Tensor) -> Tensor:
        images = images.float().contiguous(memory_format=torch.channels_last)
        return self.model.scaling_layer(2.0 * images - 1.0)

    @ieee_float32
    def features(self, images: Tensor, *, check_values: bool = True) -> list[Tensor]:
        """Unit-normalized backbone features of ``images`` in [0, 1], one tensor per layer."""
        check_image_batch("images", images)
        if check_values:
            check_image_values({"images": images})
        return [self._normalize_tensor(out) for out in self.model.net(self._scaled(images))]

    @ieee_float32
    def distance(self, features_a: Sequence[Tensor], features_b: Sequence[Tensor]) -> Tensor:
        """LPIPS ``(B,)`` between two outputs of :meth:`features` (the lpips v0.1 head)."""
        total = 0
        for lin, feat_a, feat_b in zip(self.model.lins, features_a, features_b, strict=True):
            total = total + lin((feat_a - feat_b) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.flatten()

    def forward(self, sr: Tensor, hr: Tensor, *, check_values: bool = True) -> Tensor:
        check_pair(sr, hr)
        if check_values:
            check_image_values({"sr": sr, "hr": hr})
        sr = sr.float().contiguous(memory_format=torch.channels_last)
        hr = hr.float().contiguous(memory_format=torch.channels_last)
        return self.model(sr, hr, normalize=True).flatten()


def _load_backbone(lpips_net: torch.nn.Module, backbone: Mapping[str, Tensor]) -> None:
    """Load torchvision ``features.{i}.*`` tensors into lpips' ``slice{k}.{i}.*`` modules."""
    mapped = {}
    for slice_name, block in lpips_net.named_children():
        for index, layer in block.named_children():
            for param_name, _ in layer.named_parameters(recurse=False):
                mapped[f"{slice_name}.{index}.{param_name}"] = backbone[
                    f"features.{index}.{param_name}"
                ]
    lpips_net.load_state_dict(mapped, strict=True)
