"""DeepPrior (Oberweger et al. 2015) and DeepPrior++ (2017): depth crop -> 3D joints through a pose prior.

Input:  (N, 1, 128, 128) float32 normalized depth crop in [-1, 1] (see
        :class:`handpose_core.codecs.depth_crop.DepthCropCodec`).
Output: (N, J, 3) float32 joints in *normalized uvd* of the crop's cube (u, v, d in about [-1, 1]);
        with a confidence head (``confidence=True``) (N, J, 4): a fourth column, each joint's
        probability of lying within the checkpoint's ``inference.confidence_mm`` of the truth.

Layout::

    features:  a CNN -> (N, F) feature vector                       (forward_features)
    head:      FC layers -> linear bottleneck of k units (k = 30-40)  (forward_head ...)
               -> PCA layer: mean + basis @ b, (J*3) -> (N, J, 3)     (... returns joints)

With ``head="dense"`` (the default recipe's) a second head places the joints: a small feature
pyramid over the residual stages decodes a 16x16 map whose cells vote for every joint, A2J-style
(:class:`DenseHead`). The joints ``forward`` returns are then the dense head's; the PCA head still
trains beside it (its loss is part of the task's), and the confidence head reads the PCA head's FC
output. The dense head places each joint from the cells near it rather than from one whole-crop
feature vector, which helps most on hands whose fingers take unrelated poses (24-min runs: see
:func:`handpose_core.training.deep_prior_task.recipe`).

The confidence head (optional) is a small MLP on the FC head's output, trained to tell, joint by
joint, whether the network's own prediction lies within a distance of the truth (a binary
cross-entropy on the prediction's error, :func:`handpose_core.training.deep_prior_task.confidence_loss`).
It reads that output detached, so it never trains the pose network: adding it leaves the joints as
they were, and it can be fitted afterwards on a trained, frozen network.

The PCA layer is a linear layer initialised from the principal components of the training poses
(:func:`fit_pca`, loaded with :func:`load_pca`); it is frozen unless ``finetune_pca`` is set.
Either way the network can only output poses inside a k-dimensional affine subspace: the fitted
prior, or (fine-tuned) one that training moves on from it.

Registered variants:

- ``deep_prior_seed``: the seed notebook's network, layer for layer: three 5x5 'valid' convs of 8
  filters (max-pool 2 after the first two), LeakyReLU 0.05 after each (Keras order: conv, pool,
  activation), FC 1024 ReLU, FC 1024 ReLU, linear bottleneck k, frozen PCA layer. Caffe fillers:
  conv weights U(-a, a) with a = sqrt(3 / fan_in) (Caffe ``xavier``), FC weights Gaussian with
  std 0.01, 0.05 and 0.02, biases 0.
- ``deep_prior_res`` (default): DeepPrior++-style residual network sized for a CPU: a 5x5 stride-2
  stem and a 2x2 max-pool (128 -> 32 px), four stages of basic residual blocks with batch norm
  (16, 32, 64, 128 channels; stride 2 between stages, 32 -> 4 px), flatten (or global average
  pool), FC 512-512 with dropout, bottleneck k = 30, PCA layer. The default training recipe
  (:func:`handpose_core.training.deep_prior_task.recipe`) drops the dropout, sets k = 40,
  fine-tunes the PCA layer and sets ``stem_pool_first`` (the stem's max-pool before its BN and
  ReLU rather than after: those then run on a quarter of the pixels; a training step at batch 64
  on the 2-core development CPU ~12 % faster) and ``head="dense"`` with a 16x16 grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from handpose_core.errors import HandPoseError
from handpose_core.models import register_model

# -- PCA pose prior ------------------------------------------------------------------------------


def fit_pca(poses: np.ndarray, k: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of training poses (eigenvectors of their scatter matrix).

    poses: (N, J, 3) or (N, J*3) normalized uvd.
    Returns (mean (J*3,), basis (J*3, k)) float32, basis columns orthonormal, largest variance first.
    When N < k the missing columns are further orthonormal directions, so the layer keeps its
    shape. Raises HandPoseError for no poses or k > J*3.
    """
    x = np.asarray(poses, dtype=np.float64).reshape(len(poses), -1)
    if x.shape[0] < 1:
        raise HandPoseError("fit_pca needs at least one pose")
    dim = x.shape[1]
    if k > dim:
        raise HandPoseError(f"bottleneck k={k} is larger than the pose dimension J*3={dim}")
    mean = x.mean(axis=0)
    # Eigenvectors of the (dim, dim) scatter matrix: the right singular vectors of the centred data,
    # without the (N, N) left factor a full SVD would build (12 GB for 40k poses). eigh returns a
    # complete orthonormal set, so N < k still gives k orthonormal columns.
    centred = x - mean
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)
    basis = eigvecs[:, np.argsort(eigvals)[::-1][:k]]
    return mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32)


class PCALayer(nn.Module):
    """(N, k) bottleneck -> (N, J, 3): ``mean + b @ basis.T``. Frozen unless ``trainable``.

    ``weight`` is the (J*3, k) basis and ``bias`` the (J*3,) mean, as in ``nn.Linear``, so a
    Keras ``Dense(weights=(eigenvectors, mean))`` maps onto it with ``weight = eigenvectors.T``.
    Until :func:`load_pca` is called the basis is the first k unit vectors and the mean zero.
    """

    def __init__(self, k: int, num_joints: int, trainable: bool = False) -> None:
        super().__init__()
        dim = num_joints * 3
        self.num_joints = num_joints
        self.weight = nn.Parameter(torch.eye(dim, k), requires_grad=trainable)
        self.bias = nn.Parameter(torch.zeros(dim), requires_grad=trainable)

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        """(N, k) bottleneck -> (N, J, 3) normalized uvd."""
        return nn.functional.linear(b, self.weight, self.bias).view(-1, self.num_joints, 3)

    def project(self, poses: torch.Tensor) -> torch.Tensor:
        """(N, J, 3) poses -> their projection onto the prior, mean + B B^T (x - mean), (N, J, 3)."""
        x = poses.reshape(len(poses), -1) - self.bias
        return self.forward(x @ self.weight)


def load_pca(model: nn.Module, mean: np.ndarray, basis: np.ndarray) -> None:
    """Copy a fitted PCA (mean (J*3,), basis (J*3, k), e.g. from :func:`fit_pca`) into ``model.pca``."""
    layer: PCALayer = model.pca
    mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
    basis_t = torch.as_tensor(np.asarray(basis, dtype=np.float32))
    if tuple(basis_t.shape) != tuple(layer.weight.shape) or mean_t.shape != layer.bias.shape:
        raise HandPoseError(
            f"PCA shapes mean {tuple(mean_t.shape)} basis {tuple(basis_t.shape)} do not fit the model's "
            f"{tuple(layer.bias.shape)} / {tuple(layer.weight.shape)}"
        )
    with torch.no_grad():
        layer.weight.copy_(basis_t)
        layer.bias.copy_(mean_t)


# -- blocks -------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, cin, H, W) -> (N, cout, ceil(H / stride), ceil(W / stride))."""
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.shortcut(x))


def _seed_features(input_size: int, channels: Sequence[int], kernel: int, pools: Sequence[bool],
                   slope: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    cin, size = 1, input_size
    for cout, pool in zip(channels, pools, strict=True):
        layers.append(nn.Conv2d(cin, cout, kernel))  # 'valid' padding, as Keras' default
        size = size - kernel + 1
        if pool:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers.append(nn.LeakyReLU(slope))
        cin = cout
    if size < 1:
        raise HandPoseError(f"input_size {input_size} is too small for the seed network's convs")
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), cin * size * size


def _res_features(input_size: int, stem_channels: int, channels: Sequence[int], blocks: Sequence[int],
                  stem_pool: bool, stem_pool_first: bool = False) -> tuple[nn.Sequential, int, int]:
    conv = nn.Conv2d(1, stem_channels, 5, 2, 2, bias=False)
    norm_act = [nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True)]
    size = math.ceil(input_size / 2)
    if stem_pool and stem_pool_first:
        # pool the conv's output before BN and ReLU: they (and their backward passes) then run on a
        # quarter of the stem's pixels, the largest activations of the network
        layers: list[nn.Module] = [conv, nn.MaxPool2d(2), *norm_act]
    else:
        layers = [conv, *norm_act] + ([nn.MaxPool2d(2)] if stem_pool else [])
    if stem_pool:
        size //= 2
    cin = stem_channels
    for i, (cout, n) in enumerate(zip(channels, blocks, strict=True)):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            layers.append(BasicBlock(cin, cout, stride))
            if stride == 2:
                size = math.ceil(size / 2)
            cin = cout
    return nn.Sequential(*layers), cin, size


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DenseHead(nn.Module):
    """Anchor voting on a dense map, after A2J (Xiong et al. 2019): every cell of an S x S grid over
    the crop predicts, for each joint, a weight, an in-plane offset from its own centre and a depth;
    a joint is the softmax(weight)-weighted mean of its cells' votes.

    Each joint is placed by the cells near it rather than read off a whole-crop feature vector, so a
    fingertip the camera sees is found where it lies whatever the other fingers do (the holistic FC
    head must learn every combination of finger poses).

    Decoder: a small feature pyramid over the residual backbone's stage maps (32x32, 16x16, 8x8 and
    4x4 for a 128 px crop, stages 1-4): the 4x4 map is upsampled into the 8x8 one, that (``size`` 16
    or 32) into the 16x16 one, and so on down to the ``size`` asked for. Each level adds a 1x1
    projection of its stage map to the upsampled coarser level and smooths the sum with a 3x3 conv;
    level widths are ``2 * width`` at 8x8, halving with each finer level.
    """

    SIZES = (8, 16, 32)

    def __init__(self, channels: Sequence[int], num_joints: int, size: int, width: int, input_size: int) -> None:
        super().__init__()
        if size not in self.SIZES:
            raise HandPoseError(f"dense_size must be one of {self.SIZES}, not {size}")
        self.num_joints, self.size = num_joints, size
        # the finest stage it reads: 3 for 8x8, 2 for 16x16, 1 for 32x32 (stage 1 is input / 4)
        self.finest = 4 - self.SIZES.index(size) - 1
        stage_size = math.ceil(input_size / 2 ** (self.finest + 1))
        if stage_size != size:
            raise HandPoseError(f"dense_size {size} needs a 128 px crop (input_size {input_size} gives {stage_size})")
        level_width = {3: 2 * width, 2: width, 1: max(width // 2, 1)}
        self.lat4 = nn.Conv2d(channels[3], level_width[3], 1)
        for i in range(3, self.finest - 1, -1):  # names as lat3/smooth3, reduce3/lat2/smooth2, ...
            if i < 3:
                setattr(self, f"reduce{i + 1}", nn.Conv2d(level_width[i + 1], level_width[i], 1))
            setattr(self, f"lat{i}", nn.Conv2d(channels[i - 1], level_width[i], 1))
            setattr(self, f"smooth{i}", _conv_bn_relu(level_width[i], level_width[i], 3))
        self.out_channels = level_width[self.finest]
        self.vote = nn.Conv2d(self.out_channels, 4 * num_joints, 1)
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
        v, u = torch.meshgrid(centres, centres, indexing="ij")
        # (A, 2) the cells' centres in normalized crop uv, row by row
        self.register_buffer("anchors", torch.stack([u, v], -1).reshape(size * size, 2), persistent=False)

    def decode(self, stage_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The four stage maps, finest first ((N, C1, 4S', 4S') ... (N, C4, S'/2, S'/2)) -> (N, C, S, S)."""
        up = nn.functional.interpolate
        level = self.lat4(stage_maps[3])
        for i in range(3, self.finest - 1, -1):
            coarser = level if i == 3 else getattr(self, f"reduce{i + 1}")(level)
            lateral = getattr(self, f"lat{i}")(stage_maps[i - 1])
            level = getattr(self, f"smooth{i}")(lateral + up(coarser, size=lateral.shape[-2:], mode="nearest"))
        return level

    def _votes(self, fmap: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, 4, J, S*S): each cell's weight logit, u and v offsets and depth per joint."""
        return self.vote(fmap).reshape(fmap.shape[0], 4, self.num_joints, self.size * self.size)

    def weights(self, fmap: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) decoded features -> (N, J, S, S) each joint's vote weights (sum 1 per joint)."""
        return torch.softmax(self._votes(fmap)[:, 0], dim=-1).reshape(-1, self.num_joints, self.size, self.size)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, S, S) decoded features -> ((N, J, 3) normalized uvd, (N, J, 2) the weighted anchor
        centres alone, which A2J's "anchor surrounding" loss pulls onto the joint's uv)."""
        out = self._votes(fmap)
        weight = torch.softmax(out[:, 0], dim=-1)  # (N, J, A)
        surround = weight @ self.anchors  # (N, J, 2)
        # the weighted u, v offsets and depth in one pass over the votes: (N, 3, J)
        votes = (weight[:, None] * out[:, 1:]).sum(-1)
        return torch.cat([surround + votes[:, :2].transpose(1, 2), votes[:, 2, :, None]], dim=-1), surround


# -- model --------------------------------------------------------------------------------------


class DeepPrior(nn.Module):
    """Depth crop -> (N, J, 3) normalized uvd through a k-dimensional PCA pose prior, or (``head``
    "dense") by the dense head's voting, the PCA head beside it.

    backbone:      'seed' (the notebook's 3-conv net) or 'res' (DeepPrior++-style residual net).
    num_joints:    J (21 for the synthetic HAND21 layout, 14 for NYU).
    bottleneck:    k, the number of PCA components (seed notebook: 22; DeepPrior++: 30).
    input_size:    side of the square crop (the codec's ``size``).
    fc:            widths of the FC layers before the bottleneck.
    dropout:       dropout after each FC layer (0 = off).
    finetune_pca:  train the PCA layer too (it stays initialised from the PCA).
    seed_*:        conv widths / kernel / pool-after flags / LeakyReLU slope of the seed backbone.
    stem_channels, channels, blocks, stem_pool, pool: the residual backbone; ``pool`` = 'flatten'
                   keeps the 4x4 spatial layout for the FC head (positions matter for regression),
                   'avg' global-average-pools it.
    stem_pool_first: the stem is conv -> max-pool -> BN -> ReLU (else conv -> BN -> ReLU -> max-pool).
    confidence:    add the confidence head (module doc); ``forward`` then returns (N, J, 4).
    head:          'pca' (the joints are the PCA layer's) or 'dense' (:class:`DenseHead`'s; the PCA
                   head is still built and trained, and feeds the confidence head).
    dense_size, dense_channels: the dense head's grid side (8, 16 or 32 cells over the crop; the
                   backbone stage it reads) and its width (``2 * dense_channels`` at 8x8, halving
                   with each finer level).
    """

    def __init__(
        self,
        backbone: str = "res",
        num_joints: int = 21,
        bottleneck: int = 30,
        input_size: int = 128,
        fc: Sequence[int] = (512, 512),
        dropout: float = 0.3,
        finetune_pca: bool = False,
        seed_channels: Sequence[int] = (8, 8, 8),
        seed_kernel: int = 5,
        seed_pools: Sequence[bool] = (True, True, False),
        seed_slope: float = 0.05,
        stem_channels: int = 16,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_pool: bool = True,
        stem_pool_first: bool = False,
        pool: str = "flatten",
        confidence: bool = False,
        head: str = "pca",
        dense_size: int = 16,
        dense_channels: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_joints = num_joints
        self.input_size = input_size
        if backbone == "seed":
            self.features, feat_dim = _seed_features(input_size, seed_channels, seed_kernel, seed_pools, seed_slope)
        elif backbone == "res":
            body, cout, size = _res_features(input_size, stem_channels, channels, blocks, stem_pool,
                                             stem_pool_first)
            if pool == "flatten":
                self.features, feat_dim = nn.Sequential(*body, nn.Flatten()), cout * size * size
            elif pool == "avg":
                self.features, feat_dim = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cout
            else:
                raise HandPoseError(f"unknown pool {pool!r} (flatten, avg)")
        else:
            raise HandPoseError(f"unknown DeepPrior backbone {backbone!r} (seed, res)")
        self.head = head
        if head == "dense":
            if backbone != "res" or len(channels) != 4:
                raise HandPoseError("the dense head needs the residual backbone with four stages")
            self.dense = DenseHead(channels, num_joints, dense_size, dense_channels, input_size)
            # indices in self.features of each stage's last block: the stage maps the decoder reads
            block_at = [i for i, m in enumerate(self.features) if isinstance(m, BasicBlock)]
            self._stage_ends = {block_at[n - 1] for n in itertools.accumulate(blocks)}
        elif head != "pca":
            raise HandPoseError(f"unknown DeepPrior head {head!r} (pca, dense)")
        fc_layers: list[nn.Module] = []
        cin = feat_dim
        for width in fc:
            fc_layers += [nn.Linear(cin, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                fc_layers.append(nn.Dropout(dropout))
            cin = width
        self.fc = nn.Sequential(*fc_layers)
        self.bottleneck = nn.Linear(cin, bottleneck)
        self.pca = PCALayer(bottleneck, num_joints, trainable=finetune_pca)
        # per-joint logits of "within the distance"; None without the head
        self.confidence = (nn.Sequential(nn.Linear(cin, 128), nn.ReLU(inplace=True), nn.Linear(128, num_joints))
                           if confidence else None)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.backbone == "seed":
            # Caffe fillers of the seed notebook: xavier U(-sqrt(3/fan_in), +) for convs, Gaussian FCs.
            for m in self.features.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    a = math.sqrt(3.0 / fan_in)
                    nn.init.uniform_(m.weight, -a, a)
                    nn.init.zeros_(m.bias)
            stds = [0.01, 0.05]
            linears = [m for m in self.fc.modules() if isinstance(m, nn.Linear)]
            for i, m in enumerate(linears):
                nn.init.normal_(m.weight, 0.0, stds[min(i, len(stds) - 1)])
                nn.init.zeros_(m.bias)
            nn.init.normal_(self.bottleneck.weight, 0.0, 0.02)
            nn.init.zeros_(self.bottleneck.bias)
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.fc.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if self.head == "dense":
            # start with even weights over the cells and votes at their centres
            nn.init.normal_(self.dense.vote.weight, 0.0, 1e-3)
            nn.init.zeros_(self.dense.vote.bias)
        # start at the mean pose: small bottleneck outputs
        nn.init.normal_(self.bottleneck.weight, 0.0, 1e-3)
        nn.init.zeros_(self.bottleneck.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) crop -> (N, F) features. With the dense head: the flattened 4x4 map the FC head
        reads, then the flattened decoded map the dense head votes from."""
        if self.head != "dense":
            return self.features(x)
        stage_maps = []
        for i, layer in enumerate(self.features[:-1]):  # all but the Flatten
            x = layer(x)
            if i in self._stage_ends:
                stage_maps.append(x)
        return torch.cat([stage_maps[3].flatten(1), self.dense.decode(stage_maps).flatten(1)], dim=1)

    def dense_map(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) features of a dense-head model -> (N, C, S, S) the decoded map its head votes from."""
        return self._split(features)[1]

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, F) features -> (what the FC head reads, the dense head's map or None without one)."""
        if self.head != "dense":
            return features, None
        n_dense = self.dense.out_channels * self.dense.size ** 2
        fmap = features[:, -n_dense:].reshape(-1, self.dense.out_channels, self.dense.size, self.dense.size)
        return features[:, :-n_dense], fmap

    def forward_dense(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor | None]:
        """Dense head only: (N, F) features -> (dense joints (N, J, 3), anchor centres (N, J, 2),
        the PCA head's joints (N, J, 3), confidence logits or None)."""
        flat, fmap = self._split(features)
        hidden = self.fc(flat)
        joints, surround = self.dense(fmap)
        return joints, surround, self.pca(self.bottleneck(hidden)), self._confidence_logits(hidden)

    def _confidence_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """(N, W) FC output -> (N, J) the confidence head's logits on it detached, or None without the head."""
        return None if self.confidence is None else self.confidence(hidden.detach())

    def forward_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) features -> (N, k) bottleneck (PCA coefficients)."""
        return self.bottleneck(self.fc(features))

    def forward_pose(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, F) features -> ((N, J, 3) normalized uvd, (N, J) confidence logits or None without the head).

        The head reads the FC output detached: its loss never reaches the pose network."""
        flat, fmap = self._split(features)
        if fmap is not None:  # the dense head's joints: the PCA head is not run, the FC only for the confidence
            joints = self.dense(fmap)[0]
            return joints, None if self.confidence is None else self._confidence_logits(self.fc(flat))
        hidden = self.fc(flat)
        return self.pca(self.bottleneck(hidden)), self._confidence_logits(hidden)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) features -> (N, J, 3) normalized uvd; with the confidence head (N, J, 4), the fourth
        column each joint's probability of lying within the checkpoint's ``confidence_mm``."""
        joints, logits = self.forward_pose(features)
        return joints if logits is None else torch.cat([joints, torch.sigmoid(logits)[..., None]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) normalized depth crop -> (N, J, 3) normalized uvd ((N, J, 4) with confidence)."""
        return self.forward_head(self.forward_features(x))


# -- factories ----------------------------------------------------------------------------------


@register_model("deep_prior_seed")
def deep_prior_seed(num_joints: int = 21, bottleneck: int = 30, input_size: int = 128, **kwargs: Any) -> DeepPrior:
    """The seed notebook's network (k was 22 there for 14 NYU joints x 2; set ``bottleneck`` to match)."""
    kwargs.setdefault("fc", (1024, 1024))
    kwargs.setdefault("dropout", 0.0)
    return DeepPrior(backbone="seed", num_joints=num_joints, bottleneck=bottleneck, input_size=input_size, **kwargs)


@register_model("deep_prior_res")
def deep_prior_res(num_joints: int = 21, bottleneck: int = 30, input_size: int = 128, **kwargs: Any) -> DeepPrior:
    """The default: residual CPU-sized DeepPrior++ (see the module docstring)."""
    return DeepPrior(backbone="res", num_joints=num_joints, bottleneck=bottleneck, input_size=input_size, **kwargs)
