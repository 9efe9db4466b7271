"""Building blocks of MT-CP (Multi-Task Coherence and Prioritization).

Paper: "Optimizing Dense Visual Predictions Through Multi-Task Coherence and Prioritization"
(MT-CP) §3.1-3.4.  Authors' code (Klodivio355/MT-CP): ``models/models_nyud_CL.py``
(``MultiTaskModel_NYUD``, ``DynamicFPNFusionModule``), ``models/swim_transformer2.py`` (``forward2``),
``models/utils.py`` (``GAAF_module2`` = CFM, ``SPF`` / ``TraceBack`` = SRM).  Fidelity rule
(``docs/fidelity.md`` section "MT-CP model"): follow the paper; use the code's structure where the
paper is silent; every departure from the code is named in the docstring that makes it.

Blocks, in the order data flows through them:

- :class:`CBAM` - convolutional block attention (Woo et al. 2018), used by CFM and SRM.
- :class:`WindowAttention`, :class:`SwinBlock`, :class:`PatchMerging`, :class:`SwinStage`,
  :class:`SwinPyramid` - the per-task hierarchical ("pyramid") transformer, Swin-style
  W-MSA / SW-MSA without patch embedding (authors' ``SwinTransformer.forward2``).
- :class:`DynamicFPN` - top-down pyramid fusion with learned adaptive weights (paper §3.2 DFPN).
- :class:`TaskDecoder` - :class:`SwinPyramid` + :class:`DynamicFPN`.
- :class:`CoherenceFusionModule` - CFM (paper §3.3; authors' ``GAAF_module2``).
- :class:`SPF`, :class:`SpatialRefinementModule` - SRM / trace-back (paper §3.4; ``TraceBack``).
- :class:`PredictionHead` - per-task 1x1 conv heads.

Initialisation (applied by :func:`init_mtcp_weights`): every ``Conv2d`` kaiming-normal
(``mode="fan_in"``, ReLU gain; biases 0), every ``Linear`` truncated normal std 0.02 (as Swin;
biases 0), BatchNorm / LayerNorm weight 1 and bias 0, Swin relative-position tables
truncated normal std 0.02, DFPN fusion weights 1.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CBAM",
    "WindowAttention",
    "SwinBlock",
    "PatchMerging",
    "SwinStage",
    "SwinPyramid",
    "DynamicFPN",
    "TaskDecoder",
    "CoherenceFusionModule",
    "SPF",
    "SpatialRefinementModule",
    "PredictionHead",
    "init_mtcp_weights",
    "shifted_window_mask",
]

_COHERENCE_MODES = ("projected", "none")
_FUSION_MODES = ("fast", "softmax", "sum")


def _xtc_ops():
    """The fused ops module, imported on first use (``python_models`` must import without the
    compiled extension; tests monkeypatch ``xtc_ext.ops.<op>``, so look the op up at call time)."""
    from xtc_ext import ops

    return ops


def init_mtcp_weights(module: nn.Module) -> None:
    """Initialise the MT-CP-specific layers of ``module`` in place.

    - ``nn.Conv2d``: ``kaiming_normal_(mode="fan_in", nonlinearity="relu")``, bias 0.  ``fan_in``
      (PyTorch's default mode) keeps the un-normalised outputs of the 1x1 prediction convs at
      unit scale; ``fan_out`` would give a 256->1 depth conv a weight std of sqrt(2).
    - ``nn.Linear``: ``trunc_normal_(std=0.02)``, bias 0 (Swin's ``_init_weights``; the authors'
      ``models/swim_transformer2.py`` never calls it, so their decoders keep PyTorch defaults).
    - ``BatchNorm2d`` / ``LayerNorm``: weight 1, bias 0.
    - :class:`WindowAttention` relative-position tables: ``trunc_normal_(std=0.02)`` (Swin).
    - :class:`DynamicFPN` fusion weights: 1.

    Do not apply it to a pretrained backbone.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, WindowAttention):
            nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        elif isinstance(m, DynamicFPN):
            nn.init.ones_(m.fusion_weights)


def _common_dtype(*xs: Tensor) -> torch.dtype:
    dt = xs[0].dtype
    for x in xs[1:]:
        dt = torch.promote_types(dt, x.dtype)
    return dt


# --------------------------------------------------------------------------------------------
# CBAM


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial gate.

    ``x' = x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` (shared MLP ``C -> C/r -> C`` with
    ReLU, Linear layers with bias), then ``y = x' * sigmoid(conv_kxk([mean_c(x'); max_c(x')]))``
    (2 -> 1 channels, padding ``k // 2``, no bias).

    This follows the CBAM paper's equations.  The official CBAM code (which the MT-CP authors'
    ``models/cbam.py`` is called like: ``CBAM(gate_channels=...)``) adds a BatchNorm(1) after the
    spatial conv and stacks the pooled maps as ``[max; mean]``; neither is used here.

    Args:
        channels: ``C``.
        reduction: ``r``; the hidden width is ``max(C // r, 1)``.
        spatial_kernel: ``k`` (odd); 7 as in CBAM; 1 gives the "1x1 CBAM" of MT-CP §3.3.

    Shapes: ``x`` float ``[N, C, H, W]`` -> same shape and dtype.

    Raises:
        ValueError: non-positive ``channels``/``reduction`` or even/non-positive ``spatial_kernel``.

    Source: Woo et al. 2018 Eqs. 2-3; MT-CP paper §3.3-3.4; ``docs/fidelity.md`` "MT-CP model" (CBAM).
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"CBAM: channels and reduction must be >= 1, got {channels}, {reduction}")
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"CBAM: spatial_kernel must be a positive odd int, got {spatial_kernel}")
        hidden = max(channels // reduction, 1)
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial_conv = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the channel then the spatial gate; see the class docstring."""
        ca = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        x = x * torch.sigmoid(ca).to(x.dtype)[:, :, None, None]
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial_conv(s)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Swin-style hierarchical transformer (no patch embedding)


def _window_partition(x: Tensor, ws: int) -> Tensor:
    """``[B, Hp, Wp, C]`` (Hp, Wp multiples of ``ws``) -> ``[B * nW, ws * ws, C]``, windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def _window_reverse(windows: Tensor, ws: int, B: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`_window_partition`: ``[B * nW, ws * ws, C]`` -> ``[B, H, W, C]``."""
    C = windows.shape[-1]
    x = windows.view(B, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def shifted_window_mask(Hp: int, Wp: int, window_size: int, shift: int, device=None) -> Tensor:
    """Swin's SW-MSA attention mask for a padded ``Hp x Wp`` map (multiples of ``window_size``).

    After the cyclic shift by ``-shift``, the map is cut into 3 x 3 regions (``[0, Hp - ws)``,
    ``[Hp - ws, Hp - shift)``, ``[Hp - shift, Hp)`` in each direction); token pairs of one window
    from different regions get ``-100`` (Swin's value), others 0.

    Returns:
        float32 ``[nW, ws*ws, ws*ws]``, ``nW = (Hp / ws) * (Wp / ws)``.

    Source: Swin Transformer (Liu et al. 2021) detection code, as copied by the MT-CP authors
    (``models/swim_transformer2.py::BasicLayer.forward``).
    """
    ws = window_size
    img = torch.zeros((1, Hp, Wp, 1), device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    cnt = 0
    for h in cuts:
        for w in cuts:
            img[:, h, w, :] = cnt
            cnt += 1
    mw = _window_partition(img, ws).squeeze(-1)  # nW, L
    diff = mw.unsqueeze(1) - mw.unsqueeze(2)
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``w x w`` windows with a learned relative position bias.

    ``softmax(q k^T / sqrt(d_head) + B_rel (+ mask)) v``, then a Linear projection; qkv with bias.
    Computed with ``torch.nn.functional.scaled_dot_product_attention`` (same math as Swin's
    explicit product).  Parameter names are Swin's (``qkv``, ``proj``,
    ``relative_position_bias_table``).

    Args:
        dim: channels ``C`` (divisible by ``num_heads``).
        window_size: ``w``.
        num_heads: heads.
        qkv_bias: bias of the qkv Linear (Swin default True).

    Forward:
        ``x``: ``[B_, w*w, C]`` windows; ``mask``: optional ``[nW, w*w, w*w]`` additive mask with
        ``B_`` a multiple of ``nW`` (windows ordered batch-major).  Returns ``[B_, w*w, C]``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.

    Source: Swin (Liu et al. 2021) ``WindowAttention``; authors' ``models/swim_transformer2.py``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) * (2 * ws - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        rel = rel + (ws - 1)
        index = rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """``[num_heads, w*w, w*w]`` bias gathered from the table."""
        L = self.window_size * self.window_size
        table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return table.view(L, L, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """See the class docstring."""
        B_, L, C = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(B_, L, 3, h, C // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = self.relative_position_bias()
        if mask is None:
            attn_mask = bias.unsqueeze(0)
        else:
            nW = mask.shape[0]
            attn_mask = (bias[None, None] + mask[None, :, None].to(bias.dtype)).expand(B_ // nW, nW, h, L, L)
            attn_mask = attn_mask.reshape(B_, h, L, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(B_, L, C))


class _Mlp(nn.Module):
    """Swin MLP: Linear(C, rC) -> GELU -> Linear(rC, C) (names ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Swin Transformer block: ``x + WMSA(LN(x))`` then ``x + MLP(LN(x))`` (pre-norm).

    The map is zero-padded (bottom/right, after ``norm1``) to multiples of the window, cyclically
    shifted by ``-shift`` for SW-MSA (shifted-window attention mask from
    :func:`shifted_window_mask`), attended per window, shifted back and cropped.  Padded tokens
    take part in attention unmasked, as in Swin's detection code that the authors use.  No drop-path
    and no dropout (the authors use rate 0).

    Args:
        dim: channels ``C``.
        num_heads: heads.
        window_size: ``w``.
        shift: 0 (W-MSA) or ``0 < shift < w`` (SW-MSA; MT-CP uses ``w // 2`` on odd blocks).
        mlp_ratio: MLP hidden width / ``C`` (4).

    Forward:
        ``x``: ``[B, H, W, C]`` (channels last), any ``H, W >= 1``; ``mask``: the
        ``[nW, w*w, w*w]`` mask of the padded size when ``shift > 0`` (built if None).
        Returns ``[B, H, W, C]``.

    Raises:
        ValueError: ``shift`` outside ``[0, w)``.

    Source: Swin (Liu et al. 2021) ``SwinTransformerBlock``; authors' ``models/swim_transformer2.py``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: int = 0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f"SwinBlock: shift must be in [0, window_size={window_size}), got {shift}")
        self.dim, self.window_size, self.shift = dim, window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """See the class docstring."""
        B, H, W, C = x.shape
        ws, s = self.window_size, self.shift
        shortcut = x
        x = self.norm1(x)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            if mask is None:
                mask = shifted_window_mask(Hp, Wp, ws, s, device=x.device)
        else:
            mask = None
        windows = self.attn(_window_partition(x, ws), mask)
        x = _window_reverse(windows, ws, B, Hp, Wp)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :H, :W, :]
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Swin patch merging: 2x2 neighbours concatenated ``[x00, x10, x01, x11]`` -> LayerNorm(4C)
    -> Linear(4C, 2C, no bias).  Odd sizes are zero-padded first.

    Shapes: ``[B, H, W, C]`` -> ``[B, ceil(H/2), ceil(W/2), 2C]``.

    Source: Swin ``PatchMerging``; authors' ``models/swim_transformer2.py``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """See the class docstring."""
        H, W = x.shape[1], x.shape[2]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """One stage (Swin ``BasicLayer``): ``depth`` :class:`SwinBlock` s, shift ``w // 2`` on odd
    blocks, optionally followed by :class:`PatchMerging`.

    Forward: ``x`` ``[B, H, W, C]`` -> ``(out [B, H, W, C], down)`` where ``down`` is the merged
    ``[B, ceil(H/2), ceil(W/2), 2C]`` map, or None without downsampling.

    Source: Swin ``BasicLayer``; authors' ``models/swim_transformer2.py``.
    """

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, downsample: bool
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """See the class docstring."""
        ws = self.window_size
        mask = None
        if any(b.shift > 0 for b in self.blocks):
            Hp, Wp = x.shape[1] + (-x.shape[1]) % ws, x.shape[2] + (-x.shape[2]) % ws
            mask = shifted_window_mask(Hp, Wp, ws, ws // 2, device=x.device)
        for blk in self.blocks:
            x = blk(x, mask if blk.shift > 0 else None)
        return x, (self.downsample(x) if self.downsample is not None else None)


class SwinPyramid(nn.Module):
    """The per-task "pyramid transformer" (paper §3.2 "Task Decoders", HFP) of MT-CP.

    The shared ``[N, C, H/4, W/4]`` map is flattened into tokens directly (no patch embedding,
    as the authors' ``forward2``).  ``S = len(depths)`` stages of :class:`SwinStage` with widths
    ``C * 2**i``, PatchMerging between stages (``S - 1`` downsamplings), and a LayerNorm per output
    (``norm{i}``).  Parameter names follow Swin (``layers.{i}.blocks.{j}...``,
    ``layers.{i}.downsample...``, ``norm{i}``).

    Args:
        embed_dim: ``C`` of the input map (256).
        depths: blocks per stage, MT-CP ``(1, 2, 1)``.
        num_heads: heads per stage, MT-CP ``(2, 2, 2)``.
        window_size: ``w`` (7).
        mlp_ratio: 4.

    Forward:
        ``x``: ``[N, C, h, w]``.  Returns ``[R0, ..., R_{S-1}]`` with
        ``R_i`` ``[N, C * 2**i, ceil(h / 2**i), ceil(w / 2**i)]`` (channels first).  For
        MT-CP at 480x640: 256 @ 120x160, 512 @ 60x80, 1024 @ 30x40.

    Raises:
        ValueError: ``depths``/``num_heads`` empty or of different lengths, non-positive entries, or
            a width not divisible by its heads.

    Source: paper §3.2; authors' ``SwinTransformer.forward2`` in ``models/swim_transformer2.py``
    (code: 3 stages, 2 downsamplings, although the paper says "3 down-sampling stages");
    ``docs/fidelity.md`` section "MT-CP model" (task decoders).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        depths: Sequence[int] = (1, 2, 1),
        num_heads: Sequence[int] = (2, 2, 2),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if not depths or len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty and of equal length")
        if min(depths) < 1 or min(num_heads) < 1 or window_size < 1:
            raise ValueError(
                f"depths, num_heads and window_size must be >= 1, got {depths}, {num_heads}, {window_size}"
            )
        self.dims: List[int] = [embed_dim * 2**i for i in range(len(depths))]
        for d, h in zip(self.dims, num_heads):
            if d % h:
                raise ValueError(f"stage width {d} is not divisible by its num_heads {h}")
        S = len(depths)
        self.layers = nn.ModuleList(
            SwinStage(self.dims[i], depths[i], num_heads[i], window_size, mlp_ratio, downsample=i < S - 1)
            for i in range(S)
        )
        for i, d in enumerate(self.dims):
            self.add_module(f"norm{i}", nn.LayerNorm(d))

    def forward(self, x: Tensor) -> List[Tensor]:
        """See the class docstring."""
        x = x.permute(0, 2, 3, 1)
        outs: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            outs.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
        return outs


# --------------------------------------------------------------------------------------------
# DFPN


class DynamicFPN(nn.Module):
    """Dynamic Feature Pyramid fusion (paper §3.2 "DFPN ... learning adaptive weights").

    Lateral 1x1 convs (with bias) bring every level to ``out_channels``: ``l_i``.  Top-down:
    ``f_{S-1} = l_{S-1}``, ``f_i = w_i0 * up_nearest(f_{i+1}) + w_i1 * l_i`` with learned scalar
    weights per fusion, normalised:

    - ``"fast"`` (default): ``w = relu(p) / (sum relu(p) + 1e-4)`` (EfficientDet/BiFPN "fast
      normalised fusion");
    - ``"softmax"``: ``w = softmax(p)``;
    - ``"sum"``: ``w = 1`` (the authors' code, which has no adaptive weights).

    Output ``E = conv3x3(f_0)`` (with bias).  Only the finest level's 3x3 conv is built (the code
    computes and discards the coarser ones, authors' ``DynamicFPNFusionModule.forward``).

    Args:
        in_channels: channels of the levels, finest first (MT-CP ``[256, 512, 1024]``).
        out_channels: 256.
        fusion: ``"fast"``, ``"softmax"`` or ``"sum"``.

    Attributes:
        fusion_weights: Parameter ``[S - 1, 2]`` (row ``i``: weights of ``(up(f_{i+1}), l_i)``), init 1.

    Forward: list of ``[N, in_channels[i], h_i, w_i]`` -> ``[N, out_channels, h_0, w_0]``.

    Raises:
        ValueError: empty ``in_channels``, unknown ``fusion``; in forward, wrong number of levels.

    Source: paper §3.2; authors' ``DynamicFPNFusionModule`` in ``models/models_nyud_CL.py``.
    Departure from the code (``docs/fidelity.md`` "MT-CP model", DFPN): the learned weights (paper);
    ``"sum"`` reproduces the code.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, fusion: str = "fast") -> None:
        super().__init__()
        if len(in_channels) < 1:
            raise ValueError("DynamicFPN needs at least one level")
        if fusion not in _FUSION_MODES:
            raise ValueError(f"DynamicFPN: fusion must be one of {_FUSION_MODES}, got {fusion!r}")
        self.fusion = fusion
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fusion_weights = nn.Parameter(torch.ones(max(len(in_channels) - 1, 0), 2))
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def normalized_weights(self) -> Tensor:
        """``[S - 1, 2]`` fusion weights after normalisation (ones for ``"sum"``)."""
        p = self.fusion_weights
        if self.fusion == "fast":
            r = F.relu(p)
            return r / (r.sum(dim=1, keepdim=True) + 1e-4)
        if self.fusion == "softmax":
            return torch.softmax(p, dim=1)
        return torch.ones_like(p)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """See the class docstring."""
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"DynamicFPN expects {len(self.lateral_convs)} levels, got {len(feats)}")
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        w = self.normalized_weights()
        f = lat[-1]
        for i in range(len(lat) - 2, -1, -1):
            up = F.interpolate(f, size=lat[i].shape[-2:], mode="nearest")
            f = w[i, 0].to(f.dtype) * up + w[i, 1].to(f.dtype) * lat[i]
        return self.out_conv(f)


class TaskDecoder(nn.Module):
    """Per-task decoder: :class:`SwinPyramid` then :class:`DynamicFPN`.

    Forward: ``s`` ``[N, C, h, w]`` (shared representation, ``h = H/4``) ->
    ``(E [N, C, h, w], [R0, R1, R2])`` with the pyramid outputs kept for the trace-back.

    Source: paper §3.1-3.2; authors' ``MultiTaskModel_NYUD.forward`` (``models/models_nyud_CL.py``).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        depths: Sequence[int] = (1, 2, 1),
        num_heads: Sequence[int] = (2, 2, 2),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        fusion: str = "fast",
    ) -> None:
        super().__init__()
        self.transformer = SwinPyramid(embed_dim, depths, num_heads, window_size, mlp_ratio)
        self.dims = list(self.transformer.dims)
        self.dfpn = DynamicFPN(self.dims, embed_dim, fusion)

    def forward(self, s: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """See the class docstring."""
        reps = self.transformer(s)
        return self.dfpn(reps), reps


# --------------------------------------------------------------------------------------------
# CFM


class CoherenceFusionModule(nn.Module):
    """Coherence Fusion Module (CFM) of one main task (paper §3.3, Fig. 3).

    With main ``E`` ``[N, C, h, w]`` and auxiliaries ``A_1..A_K`` (each ``[N, C, h, w]``, the other
    tasks' DFPN outputs in the fixed task order):

    1. gates: ``Ã_k = xtc_ext.ops.sigmoid_gate(A_k, conv1x1_k(A_k))`` (= ``A_k * sigmoid(conv(A_k))``);
       ``U = concat_k Ã_k`` (``K*C`` channels).
    2. main branch ``m = ReLU(BN(CBAM(E)))`` (paper; the code has no ReLU here).
    3. auxiliary branch ``a = ReLU(BN(CBAM(conv1x1_{K*C -> C}(U))))``: one representation with
       ``C`` channels so that it is comparable with ``m`` (``coherence="projected"``).  The code
       has ``U = ReLU(conv1x1_{K*C->K*C}(·))`` and two separate ``K*C``-channel branches (Q, K)
       that cannot be compared with the ``C``-channel ``m`` (authors' ``GAAF_module2``).
    4. coherence loss ``L = xtc_ext.ops.cosine_similarity_loss(m, a)`` = mean over the batch's
       pixels of ``1 - cos(m_p, a_p)`` over channels (paper: "minimise the cosine distance");
       0 with ``coherence="none"`` (the authors' code has no such loss).
    5. merge by matrix product: ``O = softmax(Q K^T * scale) V`` over the ``h*w`` pixels with
       ``Q = K = a`` (affinities from the auxiliary representation only, as the code) and
       ``V = m``; ``scale = 1/sqrt(C)`` by default (the code has no scaling; ``affinity_scale=1``
       reproduces it).  Computed with ``torch.nn.functional.scaled_dot_product_attention``
       (batch, 1 head, ``h*w`` tokens, ``C`` dims), so the ``(h*w)^2`` matrix is never
       materialised by the fused CPU/CUDA kernels (1.47 GB per image in fp32 at NYUD's 120x160).
    6. ``X = BN(CBAM_1x1(O))`` (paper: "1x1 CBAM and batch normalization": a CBAM whose spatial
       gate is a 1x1 conv; the code uses a 7x7 one), ``+ E`` if ``residual`` (off: the code comments
       the residual out).

    Args:
        dim: ``C`` (256).
        num_aux: ``K`` >= 1 (T - 1).
        coherence: ``"projected"`` or ``"none"``.
        residual: add ``E`` to the output.
        affinity_scale: softmax temperature factor; None means ``1/sqrt(C)``.

    Forward:
        ``main`` ``[N, C, h, w]``, ``aux`` sequence of ``K`` such tensors (same dtype/device).
        Returns ``(X [N, C, h, w], loss)`` with ``loss`` a float32 scalar (float64 for float64
        inputs), differentiable.

    Raises:
        ValueError: bad constructor arguments; in forward, wrong number or shape of auxiliaries.

    Source: paper §3.3; authors' ``GAAF_module2`` in ``models/utils.py``; ``docs/fidelity.md``
    section "MT-CP model" (CFM).
    """

    def __init__(
        self,
        dim: int = 256,
        num_aux: int = 2,
        coherence: str = "projected",
        residual: bool = False,
        affinity_scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        if num_aux < 1:
            raise ValueError(f"CoherenceFusionModule needs at least one auxiliary task, got num_aux={num_aux}")
        if coherence not in _COHERENCE_MODES:
            raise ValueError(f"coherence must be one of {_COHERENCE_MODES}, got {coherence!r}")
        self.dim, self.num_aux, self.coherence, self.residual = dim, num_aux, coherence, residual
        self.affinity_scale = affinity_scale
        self.gates = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in range(num_aux))
        self.main_cbam = CBAM(dim)
        self.main_bn = nn.BatchNorm2d(dim)
        self.aux_proj = nn.Conv2d(num_aux * dim, dim, 1)
        self.aux_cbam = CBAM(dim)
        self.aux_bn = nn.BatchNorm2d(dim)
        self.out_cbam = CBAM(dim, spatial_kernel=1)
        self.out_bn = nn.BatchNorm2d(dim)

    def affinity_merge(self, a: Tensor, v: Tensor) -> Tensor:
        """``softmax_j(<a_i, a_j> * scale) v_j`` over the pixels of each image.

        Args:
            a: ``[N, C, h, w]`` queries = keys.  v: ``[N, Cv, h, w]`` values.
        Returns:
            ``[N, Cv, h, w]`` (dtype of the common type of ``a`` and ``v``).  Uses
            ``torch.nn.functional.scaled_dot_product_attention`` (memory O(h*w), never (h*w)^2 on
            the fused kernels).
        """
        N, C, h, w = a.shape
        dt = _common_dtype(a, v)
        # token-major contiguous layout: the fused (flash / memory-efficient) kernels need a unit
        # stride on the feature dim, otherwise PyTorch falls back to the O(N^2)-memory math path
        q = a.to(dt).flatten(2).transpose(1, 2).contiguous().unsqueeze(1)  # N, 1, hw, C
        val = v.to(dt).flatten(2).transpose(1, 2).contiguous().unsqueeze(1)  # N, 1, hw, Cv
        scale = self.affinity_scale if self.affinity_scale is not None else 1.0 / math.sqrt(C)
        out = torch.nn.functional.scaled_dot_product_attention(q, q, val, scale=scale)
        return out.squeeze(1).transpose(1, 2).reshape(N, v.shape[1], h, w)

    def forward(self, main: Tensor, aux: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """See the class docstring."""
        if len(aux) != self.num_aux:
            raise ValueError(f"CoherenceFusionModule expects {self.num_aux} auxiliary maps, got {len(aux)}")
        for k, a_k in enumerate(aux):
            if a_k.shape != main.shape:
                raise ValueError(f"auxiliary map {k} has shape {tuple(a_k.shape)}, main has {tuple(main.shape)}")
        ops = _xtc_ops()
        gated = []
        for gate, a_k in zip(self.gates, aux):
            logits = gate(a_k)
            dt = _common_dtype(a_k, logits)
            gated.append(ops.sigmoid_gate(a_k.to(dt), logits.to(dt)))
        u = torch.cat(gated, dim=1)
        m = F.relu(self.main_bn(self.main_cbam(main)))
        a = F.relu(self.aux_bn(self.aux_cbam(self.aux_proj(u))))
        if self.coherence == "projected":
            dt = _common_dtype(m, a)
            loss = ops.cosine_similarity_loss(m.to(dt), a.to(dt))
        else:
            loss = m.new_zeros((), dtype=torch.float64 if m.dtype == torch.float64 else torch.float32)
        o = self.affinity_merge(a, m)
        x = self.out_bn(self.out_cbam(o))
        if self.residual:
            x = x + main
        return x, loss


# --------------------------------------------------------------------------------------------
# SRM / trace-back


class SPF(nn.Module):
    """One Spatial Refinement Module step (the authors' ``SPF``; paper §3.4, Fig. 4).

    ``p' = CBAM(p)``, ``b' = CBAM(b)``, ``p'' = bilinear_resize(p', size(b'))``
    (``align_corners=False``), ``c = [p'', b']``;
    ``z = ReLU(BN(conv1x1_{P+B -> out}(c)))`` (read out by a head) and, if ``carry``,
    ``y = ReLU(BN(conv1x1_{P+B -> B}(c)))`` (fed to the next step).  1x1 convs with bias, as the code.

    Args:
        pred_channels: ``P``.  back_channels: ``B``.  out_channels: channels of ``z`` (256).
        carry: build and return ``y`` (False for the last step, whose ``y`` the code discards).

    Forward: ``p`` ``[N, P, hp, wp]``, ``b`` ``[N, B, hb, wb]`` -> ``(z [N, out, hb, wb],
    y [N, B, hb, wb] or None)``.

    Source: paper §3.4; authors' ``SPF`` in ``models/utils.py``.
    """

    def __init__(self, pred_channels: int, back_channels: int, out_channels: int = 256, carry: bool = True) -> None:
        super().__init__()
        self.pred_cbam = CBAM(pred_channels)
        self.back_cbam = CBAM(back_channels)
        cin = pred_channels + back_channels
        self.out_conv = nn.Conv2d(cin, out_channels, 1)
        self.out_bn = nn.BatchNorm2d(out_channels)
        self.carry = carry
        if carry:
            self.carry_conv = nn.Conv2d(cin, back_channels, 1)
            self.carry_bn = nn.BatchNorm2d(back_channels)

    def forward(self, p: Tensor, b: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """See the class docstring."""
        p = self.pred_cbam(p)
        b = self.back_cbam(b)
        if p.shape[-2:] != b.shape[-2:]:
            p = F.interpolate(p, size=b.shape[-2:], mode="bilinear", align_corners=False)
        c = torch.cat([p, b.to(p.dtype)], dim=1)
        z = F.relu(self.out_bn(self.out_conv(c)))
        y = F.relu(self.carry_bn(self.carry_conv(c))) if self.carry else None
        return z, y


class SpatialRefinementModule(nn.Module):
    """Trace-back through a task decoder's own stages, coarse to fine (paper §3.4; code ``TraceBack``).

    With stage widths ``dims = [C, 2C, 4C]`` (``S = 3``):
    step 0 ``SPF(C, 4C)(X_t, R2) -> z0, y0``; step 1 ``SPF(4C, 2C)(y0, R1) -> z1, y1``;
    step 2 ``SPF(2C, C)(y1, R0) -> z2`` (no ``y``).  In general step ``k`` takes
    ``R_{S-1-k}``, and the ``y`` of step ``k - 1`` (``X_t`` for ``k = 0``).

    Args:
        embed_dim: ``C`` (channels of ``X_t`` and of every ``z``).
        stage_dims: widths of ``R_0..R_{S-1}``.

    Forward: ``x`` ``[N, C, H/4, W/4]`` (CFM output), ``reps`` ``[R0, ..., R_{S-1}]`` ->
    ``[z0, ..., z_{S-1}]``, ``z_k`` ``[N, C, size(R_{S-1-k})]`` (NYUD 480x640: 30x40, 60x80, 120x160).

    Raises:
        ValueError: in forward, a wrong number of stage outputs.

    Source: paper §3.4; authors' ``TraceBack`` in ``models/utils.py``; ``docs/fidelity.md`` "MT-CP model".
    """

    def __init__(self, embed_dim: int, stage_dims: Sequence[int]) -> None:
        super().__init__()
        dims = list(stage_dims)
        S = len(dims)
        steps = []
        for k in range(S):
            p = embed_dim if k == 0 else dims[S - k]
            steps.append(SPF(p, dims[S - 1 - k], embed_dim, carry=k < S - 1))
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor, reps: Sequence[Tensor]) -> List[Tensor]:
        """See the class docstring."""
        if len(reps) != len(self.steps):
            raise ValueError(f"SpatialRefinementModule expects {len(self.steps)} stage outputs, got {len(reps)}")
        zs: List[Tensor] = []
        p = x
        for k, step in enumerate(self.steps):
            z, y = step(p, reps[len(reps) - 1 - k])
            zs.append(z)
            p = y
        return zs


class PredictionHead(nn.Sequential):
    """Prediction head: ``conv1x1(C -> C, no bias) -> BN -> ReLU -> conv1x1(C -> out)`` (with bias).

    No output activation: logits for segmentation/parts/saliency, linear metres for depth,
    unnormalised vectors for normals.  The caller upsamples to the input size.  The code's final
    depth head (``256->128, x2, 128->32, ReLU, 32->1``) and the extra leading conv of its NYUD
    intermediate heads are not reproduced: one head form for every task and scale
    (``docs/fidelity.md`` section "MT-CP model", heads).

    Shapes: ``[N, C, h, w]`` -> ``[N, out, h, w]``.

    Source: authors' ``project_semseg``/``project_normals``, ``SemSegPred`` (``models/models_nyud_CL.py``).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1),
        )
