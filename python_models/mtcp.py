"""MT-CP: Multi-Task Coherence and Prioritization (the model; no training or data code).

Paper: "Optimizing Dense Visual Predictions Through Multi-Task Coherence and Prioritization"
(MT-CP) §3.1-3.4.  Authors' code (Klodivio355/MT-CP): ``MultiTaskModel_NYUD`` in
``models/models_nyud_CL.py`` and ``GAAF_module2``, ``SPF``, ``TraceBack`` in ``models/utils.py``.
Fidelity decisions (``docs/fidelity.md`` section "MT-CP model"): the paper's CFM with the cosine
coherence loss, trace-back with intermediate supervision; the code's structure where the paper is
silent.

Pipeline of :class:`MTCP` for an image ``[N, 3, H, W]`` (H, W multiples of 32) and tasks ``T``:

1. shared backbone -> ``s`` ``[N, C, H/4, W/4]`` (``C = embed_dim = 256``): :class:`ResNet50FPN`
   (default) or :class:`Mask2FormerBackbone` (the paper's; needs ``transformers`` and local weights);
2. per task :class:`~python_models.mtcp_blocks.TaskDecoder`: Swin-style pyramid
   (``R0 = C @ H/4``, ``R1 = 2C @ H/8``, ``R2 = 4C @ H/16``) + DFPN -> ``E_t`` ``[N, C, H/4, W/4]``;
3. per task :class:`~python_models.mtcp_blocks.CoherenceFusionModule` (main ``E_t``, auxiliaries
   ``E_s, s != t`` in task order) -> ``X_t`` and the cosine coherence loss;
4. per task :class:`~python_models.mtcp_blocks.SpatialRefinementModule` (trace-back
   ``X_t -> R2 -> R1 -> R0``) -> ``z0 @ H/16, z1 @ H/8, z2 @ H/4``;
5. heads: intermediate predictions from ``z0`` and ``z1``, the final one from ``z2``; all
   upsampled bilinearly (``align_corners=False``) to ``H x W``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mtcp_blocks import (
    CoherenceFusionModule,
    PredictionHead,
    SpatialRefinementModule,
    TaskDecoder,
    init_mtcp_weights,
)
from .resnet import ResNetEncoder

__all__ = ["FPN", "ResNetFPN", "ResNet50FPN", "Mask2FormerBackbone", "MTCPOutput", "MTCP"]


# --------------------------------------------------------------------------------------------
# Backbones


class FPN(nn.Module):
    """Feature pyramid network (Lin et al. 2017) returning only the finest level.

    ``inner_blocks.{i}.0``: lateral 1x1 conv (with bias) of level ``i`` to ``out_channels``;
    top-down ``f_L = inner_L(c_L)``, ``f_i = inner_i(c_i) + up_nearest(f_{i+1}, size(c_i))``;
    output ``layer_blocks.0.0``: 3x3 conv (with bias) of ``f_0``.  Names are torchvision's
    ``FeaturePyramidNetwork``'s; only the output conv of the finest level is built (the others
    would be unused parameters), so a torchvision FPN state dict loads with ``strict=False``
    (``layer_blocks.1-3`` unexpected).

    Args:
        in_channels: channels of the levels, finest first (ResNet-50: 256, 512, 1024, 2048).
        out_channels: 256.

    Forward: list of ``[N, in_channels[i], h_i, w_i]`` -> ``[N, out_channels, h_0, w_0]``.

    Source: torchvision ``ops.feature_pyramid_network``; ``docs/fidelity.md`` section "MT-CP model"
    (backbone) for the default MT-CP backbone.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1))])

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """See the class docstring."""
        f = self.inner_blocks[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lat = self.inner_blocks[i](feats[i])
            f = lat + F.interpolate(f, size=lat.shape[-2:], mode="nearest")
        return self.layer_blocks[0](f)


class ResNetFPN(nn.Module):
    """Shared backbone: torchvision-style ResNet + FPN, output P2 ``[N, C, H/4, W/4]``.

    ``encoder`` is :class:`~python_models.resnet.ResNetEncoder` (torchvision parameter names, e.g.
    ``encoder.layer4.2.conv3.weight``; load ImageNet weights with
    ``encoder.load_torchvision_state_dict``); ``fpn`` is :class:`FPN` over ``layer1..layer4``
    (strides 4, 8, 16, 32).  FPN convs: kaiming-normal (fan_in), bias 0; the encoder keeps
    torchvision's init.

    This replaces the paper's Mask2Former backbone (:class:`Mask2FormerBackbone`) by default so
    that MT-CP trains without ``transformers`` or downloaded weights; the interface (256 channels
    at H/4) is the same.

    Args:
        depth: ResNet depth (18, 34, 50, 101, 152).
        out_channels: ``C`` (256).

    Attributes:
        out_channels: ``C``.

    Forward: ``x`` float ``[N, 3, H, W]`` (normalised RGB) -> ``[N, C, ceil(H/4), ceil(W/4)]``.

    Raises:
        ValueError: unsupported depth; input not ``[N, 3, H, W]`` (from the encoder).

    Source: ``docs/fidelity.md`` section "MT-CP model" (default backbone); paper §3.2 for the role
    (256-ch shared map at H/4).
    """

    def __init__(self, depth: int = 50, out_channels: int = 256) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(depth)
        self.fpn = FPN(self.encoder.channels[1:], out_channels)
        self.out_channels = out_channels
        init_mtcp_weights(self.fpn)

    def forward(self, x: Tensor) -> Tensor:
        """See the class docstring."""
        _, c2, c3, c4, c5 = self.encoder(x)
        return self.fpn([c2, c3, c4, c5])


class ResNet50FPN(ResNetFPN):
    """:class:`ResNetFPN` with ResNet-50 (the default MT-CP backbone here): 256 ch at H/4.

    Source: see :class:`ResNetFPN`.
    """

    def __init__(self, out_channels: int = 256) -> None:
        super().__init__(50, out_channels)


class Mask2FormerBackbone(nn.Module):
    """The paper's shared backbone: HuggingFace Mask2Former + instance projection (paper §3.2).

    ``F`` = pixel-decoder output ``pixel_decoder_last_hidden_state`` ``[N, D, H/4, W/4]``
    (D = 256), ``M`` = final-layer mask logits ``masks_queries_logits`` ``[N, Q, H/4, W/4]``.

    - ``projection="paper"`` (default): "multiply the masks with the pixel embeddings, then sum
      over the instances": ``S = einsum("bqhw,bdhw->bdhw", sigmoid(M), F) = F * sum_q sigmoid(M_q)``.
    - ``projection="code"``: the authors' ``einsum`` on the RAW logits, ``S = F * sum_q M_q``
      (``MultiTaskModel_NYUD.forward`` in ``models/models_nyud_CL.py``).

    Only the final decoder layer's masks are used, as the code (the paper mentions masks "from
    each layer"; per-layer masks and class logits are unused in the code).  The whole network is
    trainable (the authors fine-tune it).  The model is loaded with
    ``Mask2FormerForUniversalSegmentation.from_pretrained(path, local_files_only=True)``: it never
    downloads (the authors use ``facebook/mask2former-swin-small-ade-semantic``).

    Args:
        path: local directory (or file) of a saved Mask2Former.
        projection: ``"paper"`` or ``"code"``.

    Attributes:
        out_channels: ``D`` (``config.mask_feature_size``, 256).

    Forward: ``x`` ``[N, 3, H, W]`` (ImageNet-normalised) -> ``[N, D, H/4, W/4]``.

    Raises:
        ImportError: ``transformers`` is not installed.
        FileNotFoundError: ``path`` is None or does not exist.
        ValueError: unknown ``projection``.

    Source: paper §3.2 "Shared Backbone"; authors' ``MultiTaskModel_NYUD`` (``self.backbon``,
    ``Mask2FormerForUniversalSegmentation``); ``docs/fidelity.md`` section "MT-CP model".
    """

    def __init__(self, path: Optional[str], projection: str = "paper") -> None:
        super().__init__()
        if projection not in ("paper", "code"):
            raise ValueError(f"projection must be 'paper' or 'code', got {projection!r}")
        try:
            from transformers import Mask2FormerForUniversalSegmentation
        except ImportError as e:  # pragma: no cover - message checked by the tests
            raise ImportError(
                "backbone='mask2former' needs the `transformers` package (pip install transformers); "
                "use backbone='resnet50_fpn' otherwise"
            ) from e
        if path is None or not os.path.exists(os.fspath(path)):
            raise FileNotFoundError(
                f"Mask2Former weights not found at {path!r}: pass mask2former_path= a local directory saved with "
                "save_pretrained (e.g. of facebook/mask2former-swin-small-ade-semantic); nothing is downloaded"
            )
        self.projection = projection
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(os.fspath(path), local_files_only=True)
        config = getattr(self.model, "config", None)
        self.out_channels = int(getattr(config, "mask_feature_size", 256))

    def forward(self, x: Tensor) -> Tensor:
        """See the class docstring."""
        out = self.model(pixel_values=x)
        feats = out.pixel_decoder_last_hidden_state
        masks = out.masks_queries_logits
        if masks.shape[-2:] != feats.shape[-2:]:
            masks = F.interpolate(masks, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        if self.projection == "paper":
            masks = torch.sigmoid(masks)
        return torch.einsum("bqhw,bdhw->bdhw", masks.to(feats.dtype), feats)


# --------------------------------------------------------------------------------------------
# Model


class MTCPOutput(NamedTuple):
    """Outputs of :class:`MTCP`.

    Fields:
        predictions: task -> ``[N, C_t, H, W]`` final predictions at the input size (semseg /
            human_parts logits, depth linear metres (no activation, may be negative), normals
            unnormalised 3-vectors (the loss and evaluation normalise), sal one logit).
        intermediate: task -> list of ``S - 1`` (2) intermediate predictions ``[N, C_t, H, W]``,
            coarse to fine (from SRM ``z0`` at H/16, ``z1`` at H/8); empty lists without SRM.
        coherence_loss: float32 scalar, sum over tasks of the CFM cosine losses
            (mean over pixels of ``1 - cos``, each in [0, 2]); 0 without CFM.
        features: task -> ``[N, C, H/4, W/4]`` (``C = embed_dim``) pre-head feature map, the input
            of ``heads[t]`` (the task-feature interface,
            :class:`~python_models.interface.TaskFeatureHost`): the SRM's last ``z`` (``z2``), or
            the fused map ``X_t`` without SRM (``E_t`` without CFM either).  References to tensors
            the forward computes anyway (not detached).  ``None`` when the output is built by hand
            without them (the default).

    Source: paper §3.1 (intermediate predictions kept for the loss, Eq. 7) and §3.3.
    """

    predictions: Dict[str, Tensor]
    intermediate: Dict[str, List[Tensor]]
    coherence_loss: Tensor
    features: Optional[Dict[str, Tensor]] = None


_BACKBONE_RE = re.compile(r"^resnet(\d+)_fpn$")


def _check_tasks(tasks: Mapping[str, int]) -> Dict[str, int]:
    if not isinstance(tasks, Mapping) or len(tasks) == 0:
        raise ValueError(f"tasks must be a non-empty dict task name -> output channels, got {tasks!r}")
    out: Dict[str, int] = {}
    for name, c in tasks.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task names must be non-empty strings without '.', got {name!r}")
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"task {name!r}: output channels must be a positive int, got {c!r}")
        out[name] = int(c)
    return out


class MTCP(nn.Module):
    """MT-CP multi-task dense prediction model (paper §3.1-3.4).

    Args:
        tasks: task name -> output channels, in a fixed order that also fixes the auxiliary order
            of every CFM; NYUD ``{"semseg": 40, "depth": 1, "normals": 3}``, PASCAL-Context
            ``{"semseg": 21, "human_parts": 7, "sal": 1}``.
        backbone: ``"resnet50_fpn"`` (default; also ``"resnet{18,34,101,152}_fpn"``) or
            ``"mask2former"`` (the paper's; needs ``mask2former_path``).
        use_cfm: build the Coherence Fusion Modules; False is the "w/o CFM" ablation
            (``X_t = E_t``, coherence loss 0).
        use_srm: build the trace-back; False is the "w/o SRM" ablation (final head on ``X_t``, no
            intermediate predictions).
        coherence: ``"projected"`` (cosine loss between the CFM main and projected auxiliary
            representations) or ``"none"`` (same CFM, no loss, as the authors' code).
        embed_dim: ``C``: backbone output, decoder base width (stages ``C, 2C, 4C``), DFPN, CFM,
            SRM ``z`` and head widths (256).
        window_size: Swin window (7).
        depths: blocks per decoder stage ``(1, 2, 1)``.
        num_heads: heads per decoder stage ``(2, 2, 2)``.
        mask2former_path: local Mask2Former directory for ``backbone="mask2former"``.
        dfpn_fusion: ``"fast"`` (default), ``"softmax"`` or ``"sum"`` (code), see
            :class:`~python_models.mtcp_blocks.DynamicFPN`.
        cfm_residual: add ``E_t`` to the CFM output (the code comments it out; default False).
        mlp_ratio: Swin MLP ratio (4).
        mask2former_projection: ``"paper"`` or ``"code"``, see :class:`Mask2FormerBackbone`.

    Submodules: ``backbone``, ``decoders[t]`` (TaskDecoder), ``cfms[t]`` (if ``use_cfm``),
    ``srms[t]`` and ``intermediate_heads[t]`` (if ``use_srm``), ``heads[t]``.

    Attributes:
        feature_channels: task -> ``embed_dim``, the channels of :attr:`MTCPOutput.features`
            (task-feature interface).

    Forward:
        ``x`` float ``[N, 3, H, W]``, ``H`` and ``W`` positive multiples of 32.
        Returns :class:`MTCPOutput`.  BatchNorm needs more than one value per channel in training
        mode (``N * (H/32) * (W/32) > 1``, the ResNet ``layer4`` map).

    Raises:
        ValueError: bad ``tasks``, unknown ``backbone``/``coherence``/``dfpn_fusion``, a single task
            with ``use_cfm=True`` (no auxiliary), stage widths not divisible by their heads, a
            Mask2Former whose feature width differs from ``embed_dim``; in forward, an input that is
            not ``[N, 3, H, W]`` or whose H or W is not a positive multiple of 32.
        TypeError: non-tensor or non-floating input.
        ImportError / FileNotFoundError: ``backbone="mask2former"`` without ``transformers`` or
            without local weights.

    Source: paper §3.1-3.4; authors' ``MultiTaskModel_NYUD`` in ``models/models_nyud_CL.py``;
    ``docs/fidelity.md`` section "MT-CP model".
    Departures from the authors' code, all following the paper or ``docs/fidelity.md``: ResNet-50-FPN
    default backbone; sigmoid masks in the Mask2Former projection; learned DFPN fusion weights;
    CFM main-branch ReLU, a single projected auxiliary branch, the cosine coherence loss, 1/sqrt(d)
    affinity scaling, 1x1-spatial output CBAM; one head form for all tasks; no unused modules.
    """

    def __init__(
        self,
        tasks: Mapping[str, int],
        backbone: str = "resnet50_fpn",
        use_cfm: bool = True,
        use_srm: bool = True,
        coherence: str = "projected",
        embed_dim: int = 256,
        window_size: int = 7,
        depths: Sequence[int] = (1, 2, 1),
        num_heads: Sequence[int] = (2, 2, 2),
        mask2former_path: Optional[str] = None,
        *,
        dfpn_fusion: str = "fast",
        cfm_residual: bool = False,
        mlp_ratio: float = 4.0,
        mask2former_projection: str = "paper",
    ) -> None:
        super().__init__()
        self.task_channels = _check_tasks(tasks)
        self.tasks: List[str] = list(self.task_channels)
        if coherence not in ("projected", "none"):
            raise ValueError(f"coherence must be 'projected' or 'none', got {coherence!r}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if use_cfm and len(self.tasks) < 2:
            raise ValueError("use_cfm=True needs at least two tasks (the CFM fuses the other tasks' features)")
        self.embed_dim = embed_dim
        self.use_cfm, self.use_srm, self.coherence = bool(use_cfm), bool(use_srm), coherence

        m = _BACKBONE_RE.match(backbone) if isinstance(backbone, str) else None
        if m is not None:
            self.backbone: nn.Module = ResNetFPN(int(m.group(1)), embed_dim)
        elif backbone == "mask2former":
            self.backbone = Mask2FormerBackbone(mask2former_path, mask2former_projection)
            if self.backbone.out_channels != embed_dim:
                raise ValueError(
                    f"the Mask2Former pixel embeddings have {self.backbone.out_channels} channels "
                    f"but embed_dim={embed_dim}"
                )
        else:
            raise ValueError(
                f"unknown backbone {backbone!r}: use 'resnet50_fpn' (or resnet{{18,34,101,152}}_fpn) or 'mask2former'"
            )
        self.backbone_name = backbone

        self.decoders = nn.ModuleDict(
            {t: TaskDecoder(embed_dim, depths, num_heads, window_size, mlp_ratio, dfpn_fusion) for t in self.tasks}
        )
        self.stage_dims: List[int] = list(self.decoders[self.tasks[0]].dims)
        n_stages = len(self.stage_dims)
        if self.use_cfm:
            self.cfms = nn.ModuleDict(
                {t: CoherenceFusionModule(embed_dim, len(self.tasks) - 1, coherence, cfm_residual) for t in self.tasks}
            )
        if self.use_srm:
            self.srms = nn.ModuleDict({t: SpatialRefinementModule(embed_dim, self.stage_dims) for t in self.tasks})
            self.intermediate_heads = nn.ModuleDict(
                {
                    t: nn.ModuleList(PredictionHead(embed_dim, c) for _ in range(n_stages - 1))
                    for t, c in self.task_channels.items()
                }
            )
        self.heads = nn.ModuleDict({t: PredictionHead(embed_dim, c) for t, c in self.task_channels.items()})
        self.feature_channels: Dict[str, int] = {t: embed_dim for t in self.tasks}

        for name, child in self.named_children():
            if name != "backbone":
                init_mtcp_weights(child)

    @staticmethod
    def _check_input(x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"MTCP expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MTCP expects an input of shape [N, 3, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2], x.shape[-1]  # not int(): torch.export keeps H and W dynamic
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ValueError(f"MTCP: input height and width must be positive multiples of 32, got {h}x{w}")
        if not x.is_floating_point():
            raise TypeError(f"MTCP expects a floating-point input, got dtype {x.dtype}")

    def shared_module(self) -> nn.Module:
        """The module whose output is the shared representation every task decoder consumes: the backbone
        (one map ``[N, embed_dim, H/4, W/4]``). The Jacobian-descent weightings
        (``xtc_ext.weighting.jacobian``) take the task gradients there."""
        return self.backbone

    def forward(self, x: Tensor) -> MTCPOutput:
        """Run MT-CP; see the class docstring and :class:`MTCPOutput`."""
        self._check_input(x)
        size = x.shape[-2:]
        s = self.backbone(x)
        embeds: Dict[str, Tensor] = {}
        reps: Dict[str, List[Tensor]] = {}
        for t in self.tasks:
            embeds[t], reps[t] = self.decoders[t](s)

        coherence = torch.zeros((), device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        if self.use_cfm:
            fused: Dict[str, Tensor] = {}
            for t in self.tasks:
                aux = [embeds[o] for o in self.tasks if o != t]
                fused[t], loss = self.cfms[t](embeds[t], aux)
                coherence = coherence + loss.to(coherence.dtype)
        else:
            fused = embeds

        def up(y: Tensor) -> Tensor:
            return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

        predictions: Dict[str, Tensor] = {}
        intermediate: Dict[str, List[Tensor]] = {}
        features: Dict[str, Tensor] = {}
        for t in self.tasks:
            if self.use_srm:
                zs = self.srms[t](fused[t], reps[t])
                intermediate[t] = [up(head(z)) for head, z in zip(self.intermediate_heads[t], zs[:-1])]
                features[t] = zs[-1]
            else:
                intermediate[t] = []
                features[t] = fused[t]
            predictions[t] = up(self.heads[t](features[t]))
        return MTCPOutput(predictions, intermediate, coherence, features)
