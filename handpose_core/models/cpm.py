"""Convolutional Pose Machines in the OpenPose hand layout (Wei et al. 2016; Simon et al. 2017).

Layout of ``cpm_openpose`` (the published OpenPose hand network, layer for layer)::

    RGB (N, 3, H, W)
    VGG-19 conv1_1..conv4_4: 64,64 | pool | 128,128 | pool | 256 x4 | pool | 512 x4   (3x3, ReLU)
    conv5_1 (512), conv5_2 (512), conv5_3_CPM (128)                                  (3x3, ReLU)
      -> features F (N, 128, H/8, W/8)
    stage 1:    conv6_1_CPM (1x1, 512, ReLU), conv6_2_CPM (1x1, K+1)          -> B1
    stage t>=2: concat(B_{t-1}, F) (22 + 128 = 150 ch), Mconv1..5_stageT (7x7, 128, ReLU),
                Mconv6_stageT (1x1, 128, ReLU), Mconv7_stageT (1x1, K+1)       -> Bt

``forward`` returns every stage's belief maps, ``[B1, ..., BT]``, each (N, K+1, H/8, W/8): the
training loss supervises all of them and the last one is the prediction. Channel K (the last) is
the background map. Parameter names are OpenPose's (``conv1_1.weight``, ``Mconv1_stage2.bias``,
...), so the common PyTorch conversion of ``pose_iter_102000.caffemodel`` loads by name (see
:mod:`handpose_core.openpose_import`). The concat order (belief maps first, then features) and
the max-pool (2x2, stride 2, floor) follow OpenPose's ``pose_deploy.prototxt``.

Stage count, feature width, stage kernel/depth and the backbone are config, so light variants for
a CPU share the code and the output contract: ``cpm_light`` swaps VGG-19 for a small stride-8
stem with batch norm and uses 3 stages of 64 channels. Registered variants: ``cpm_openpose``,
``cpm_light``, ``cpm_tiny`` (tests / smoke runs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from handpose_core.models import register_model

# (name, out_channels) for conv3x3 + ReLU, or ("pool", 0) for a 2x2 max-pool.
VGG19_LAYERS: tuple[tuple[str, int], ...] = (
    ("conv1_1", 64), ("conv1_2", 64), ("pool1", 0),
    ("conv2_1", 128), ("conv2_2", 128), ("pool2", 0),
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("conv3_4", 256), ("pool3", 0),
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("conv4_4", 512),
    ("conv5_1", 512), ("conv5_2", 512),
)  # then conv5_3_CPM (3x3, width)


def light_layers(base: int) -> tuple[tuple[str, int, int], ...]:
    """(name, out_channels, stride) of the light stride-8 stem, conv3x3 + BN + ReLU each."""
    return (
        ("stem1", base, 2), ("stem2", base, 1),
        ("stem3", 2 * base, 2), ("stem4", 2 * base, 1),
        ("stem5", 4 * base, 2), ("stem6", 4 * base, 1), ("stem7", 4 * base, 1),
    )  # then conv5_3_CPM (3x3, width)


class CPM(nn.Module):
    """Convolutional Pose Machine; see the module docstring for the layout.

    num_keypoints: K; the network outputs K + 1 maps (the last is background).
    stages:        number of stages T (>= 1); stage 1 is the 1x1 head on the features.
    width:         feature and stage channels (OpenPose: 128).
    stage1_width:  hidden channels of the stage-1 1x1 head (OpenPose: 512).
    stage_kernel:  kernel of Mconv1..N of stages >= 2 (OpenPose: 7).
    stage_convs:   number of stage_kernel convs in stages >= 2 (OpenPose: 5).
    backbone:      'vgg19' (OpenPose, no normalisation) or 'light' (stride-8 stem with BatchNorm).
    light_base:    channels of the light stem's first block (doubles twice).
    batch_norm:    BatchNorm after every hidden conv of the stages too (light variants).
    input_size:    the square input the model is trained for (pixels, multiple of 8); recorded for
                   the pipelines, any multiple-of-8 size runs.
    """

    stride = 8

    def __init__(
        self,
        num_keypoints: int = 21,
        stages: int = 6,
        width: int = 128,
        stage1_width: int = 512,
        stage_kernel: int = 7,
        stage_convs: int = 5,
        backbone: str = "vgg19",
        light_base: int = 32,
        batch_norm: bool = False,
        input_size: int = 368,
    ) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        if input_size % self.stride:
            raise ValueError(f"input_size must be a multiple of {self.stride}, got {input_size}")
        self.num_keypoints = num_keypoints
        self.num_maps = num_keypoints + 1
        self.num_stages = stages
        self.input_size = input_size
        self.backbone = backbone
        self._acts: dict[str, tuple[bool, bool]] = {}  # conv name -> (relu, batch norm)
        self._backbone_names: list[str | None] = []  # None = max-pool
        in_ch = 3
        if backbone == "vgg19":
            for name, out_ch in VGG19_LAYERS:
                if out_ch == 0:
                    self._backbone_names.append(None)
                    continue
                self._add_conv(name, in_ch, out_ch, 3, relu=True, norm=batch_norm)
                self._backbone_names.append(name)
                in_ch = out_ch
        elif backbone == "light":
            for name, out_ch, stride in light_layers(light_base):
                self._add_conv(name, in_ch, out_ch, 3, relu=True, norm=True, stride=stride)
                self._backbone_names.append(name)
                in_ch = out_ch
        else:
            raise ValueError(f"unknown backbone {backbone!r} (vgg19, light)")
        self._add_conv("conv5_3_CPM", in_ch, width, 3, relu=True, norm=batch_norm or backbone == "light")
        self._backbone_names.append("conv5_3_CPM")

        # stage 1
        self._stage_names: list[list[str]] = [["conv6_1_CPM", "conv6_2_CPM"]]
        self._add_conv("conv6_1_CPM", width, stage1_width, 1, relu=True, norm=batch_norm)
        self._add_conv("conv6_2_CPM", stage1_width, self.num_maps, 1, relu=False, norm=False)
        # stages 2..T
        for t in range(2, stages + 1):
            names = []
            ch = self.num_maps + width
            for i in range(1, stage_convs + 1):
                name = f"Mconv{i}_stage{t}"
                self._add_conv(name, ch, width, stage_kernel, relu=True, norm=batch_norm)
                names.append(name)
                ch = width
            n = stage_convs + 1
            self._add_conv(f"Mconv{n}_stage{t}", width, width, 1, relu=True, norm=batch_norm)
            self._add_conv(f"Mconv{n + 1}_stage{t}", width, self.num_maps, 1, relu=False, norm=False)
            names += [f"Mconv{n}_stage{t}", f"Mconv{n + 1}_stage{t}"]
            self._stage_names.append(names)
        self._relu = nn.ReLU(inplace=True)
        self._pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.reset_parameters()

    # -- construction helpers -----------------------------------------------------------------
    def _add_conv(self, name: str, in_ch: int, out_ch: int, k: int, relu: bool, norm: bool, stride: int = 1):
        # The conv is registered under OpenPose's name itself (``conv1_1.weight``); its optional
        # BatchNorm under ``<name>_bn`` so that the conv names stay importable.
        self.add_module(name, nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=k // 2, bias=not norm))
        if norm:
            self.add_module(f"{name}_bn", nn.BatchNorm2d(out_ch))
        self._acts[name] = (relu, norm)

    def reset_parameters(self) -> None:
        """He init for hidden convs; small normal init for the belief-map outputs (start near 0)."""
        for name, module in self.named_children():
            if isinstance(module, nn.Conv2d):
                relu, _ = self._acts[name]
                if relu:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                else:
                    nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, name)(x)
        relu, norm = self._acts[name]
        if norm:
            x = getattr(self, f"{name}_bn")(x)
        return self._relu(x) if relu else x

    # -- forward ---------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalized image -> (N, width, H/8, W/8) features (conv5_3_CPM)."""
        for name in self._backbone_names:
            x = self._pool(x) if name is None else self._conv(name, x)
        return x

    def forward_head(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Features -> belief maps of every stage, list of T tensors (N, K+1, H/8, W/8)."""
        outputs = []
        x = features
        for t, names in enumerate(self._stage_names):
            if t > 0:
                x = torch.cat([outputs[-1], features], dim=1)
            for name in names:
                x = self._conv(name, x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> [B1, ..., BT], each (N, K+1, H/8, W/8); H, W multiples of 8."""
        return self.forward_head(self.forward_features(x))

    def layer_names(self) -> list[str]:
        """Conv layer names in forward order (OpenPose names for the vgg19 backbone)."""
        return [n for n in self._backbone_names if n is not None] + [n for s in self._stage_names for n in s]


class MirrorAveraged(nn.Module):
    """A CPM whose belief maps are the mean of the image's and its left-right mirror's, mirrored back.

    (N, 3, H, W) -> [B1, ..., BT] like the CPM it wraps (a module or any callable, e.g. the
    onnxruntime one), running it once on a batch of 2N. Only for a model that saw left and right
    hands alike (ours: the synthetic generator and the CMU labels hold both; not OpenPose's, which
    is fed right hands), so a mirrored hand needs no keypoint swap. Exact for widths that are
    multiples of the stride: map column j of the mirror image is column w - 1 - j of the maps.
    The 2026-12-01 light CPM weights, 1,000 held-out crops: PCK@0.2 0.819 -> 0.829, EPE 12.5 -> 12.1 px. The RGB
    pipeline wraps its model in it (``pipeline.flip_average``), evaluate_cpm too.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) normalized image -> [B1, ..., BT], each (N, K+1, H/8, W/8), mirror-averaged."""
        n = x.shape[0]
        stages = self.model(torch.cat([x, x.flip(-1)]))
        return [(s[:n] + s[n:].flip(-1)) / 2 for s in stages]


OPENPOSE_CONFIG = dict(num_keypoints=21, stages=6, width=128, stage1_width=512, stage_kernel=7, stage_convs=5,
                       backbone="vgg19", batch_norm=False, input_size=368)
# The CPU variant is sized for training throughput: on 2 cores the 45-minute budget is spent long
# before the network stops improving, so FLOPs per sample decide the accuracy. At 96 px with 3x3
# stage convs and a 16-channel stem a training step costs a third of the earlier 128 px / 5x5 /
# 24-channel layout, and 10 CPU-minutes reached PCK@0.2 0.71 on held-out crops against 0.61.
LIGHT_CONFIG = dict(num_keypoints=21, stages=3, width=64, stage1_width=128, stage_kernel=3, stage_convs=3,
                    backbone="light", light_base=16, batch_norm=True, input_size=96)
TINY_CONFIG = dict(num_keypoints=21, stages=2, width=16, stage1_width=16, stage_kernel=3, stage_convs=1,
                   backbone="light", light_base=8, batch_norm=True, input_size=64)


@register_model("cpm_openpose")
def cpm_openpose(**config: Any) -> CPM:
    """The OpenPose hand network (VGG-19, 6 stages, 128 ch, 368x368 input); loads OpenPose's weights."""
    return CPM(**{**OPENPOSE_CONFIG, **config})


@register_model("cpm_light")
def cpm_light(**config: Any) -> CPM:
    """CPU variant: stride-8 BN stem (16-64 ch), 3 stages of 64 ch with 3x3 stage convs, 96x96 input."""
    return CPM(**{**LIGHT_CONFIG, **config})


@register_model("cpm_tiny")
def cpm_tiny(**config: Any) -> CPM:
    """Minimal variant for tests and smoke runs (2 stages, 16 ch, 64x64 input)."""
    return CPM(**{**TINY_CONFIG, **config})
