"""CAT-Net: Few Shot Medical Image Segmentation with Cross Attention Transformer (Lin et al., MICCAI 2023,
arXiv 2303.13867).

No reference implementation exists: the official repository (hust-linyi/CAT-Net) does not run and does not
implement the paper (no masking, no iterations; its issue #16 reports Dice ~0.15), and the co-author repository
(CYF2000127/CAT-Net) never constructs its transformer. This file follows the paper's text and Fig. 1. Parameter
counts are therefore this implementation's own, measured on the built model (``REFERENCE_PARAMS`` below); the
ResNet inside matches torchvision's exactly (ResNet-50 25,557,032 / ResNet-101 44,549,160 with ``fc``; 23,508,032
/ 42,500,160 without it, which is what CAT-Net holds).

Pipeline, for a query image and K support images with binary foreground masks (1-way K-shot):

1. MIFE (mask incorporated feature extraction). A ResNet maps query and support images to features. Mid-level
   features (layer2 + layer3, concatenated, 1x1 conv to ``dim``) are the features that are segmented; high-level
   features (layer4) give the prior mask. The support prototype is the masked average (MAP) of the support
   features; it is expanded over the map and concatenated to both branches, with the prior mask on the query
   branch and the support mask on the support branch, then merged by a 1x1 conv. A small conv classifier predicts
   the initial query mask M_0.
2. N CMAT modules (cross masked attention transformer), each: self-attention on each branch; cross masked attention
   S->Q (query tokens attend to the support foreground, masked by the support mask) and Q->S (support tokens attend
   to the query foreground, masked by the previous query prediction M_{i-1}); an MLP per branch; all post-norm
   (add & norm). Then prototype segmentation: MAP prototype of the refined support features, cosine similarity to
   the refined query features -> M_i.
3. Iterative refinement: the N modules run in sequence, each feeding its query mask to the next, and every M_i
   (and M_0) is supervised. ``forward`` returns all N + 1 logit maps; the last one is the prediction.

Choices the paper leaves open (each one is a config field or noted where it is made):

- Backbone: torchvision's ResNet-50 (``catnet_r50``, the paper's text) and ResNet-101 (``catnet_r101``, the
  official repository's README), output stride 8 by dilating layer3 and layer4 (DeepLab / PFENet practice; the
  official code runs attention on 32x32 maps of 256x256 slices, i.e. stride 8).
- Multi-level features: layer2 + layer3 -> 1x1 conv -> ``dim`` = 256 + ReLU, shared by query and support; prior
  mask from layer4 as in PFENet (Tian et al. 2020): per query pixel, the highest cosine similarity to any support
  foreground pixel, min-max normalised per image; averaged over the K shots.
- Masks at feature resolution are area fractions (adaptive average pooling of the binary mask), so a feature pixel
  without any foreground has weight exactly 0 in MAP and in masked attention.
- Merge conv: one 1x1 conv (2 * dim + 1 -> dim) + ReLU shared by both branches (the support branch's extra channel
  is its own mask, the query branch's the prior). Classifier: 3x3 conv + ReLU + 1x1 conv to one logit (PFENet's).
- CMAT: 8 heads, no positional encoding (the paper names none), MLP hidden 8 * dim = 2048 with ReLU (the co-author
  code's Mask2Former decoder: hidden 256, 8 heads, FFN 2048). Query and support branches have their own weights.
  ``directions`` = "both" (S<->Q), "s2q" or "q2s" reproduces the paper's Table 2 ablation.
- The query mask that masks Q->S is the previous prediction thresholded at 0.5 and detached (``query_mask="hard"``,
  Mask2Former's masked attention), so background pixels are removed exactly; ``"soft"`` weighs keys by the
  predicted probability instead. An empty mask transfers nothing (see ``attention/cross_masked.py``).
- Prototype segmentation (ADNet, Hansen et al. 2022, which the official code builds on): a single foreground
  prototype; logit = 20 * cos(F_q, p) - t, with the threshold t regressed by a linear layer from the mean query
  feature, per CMAT module and for the baseline.
- Supervision: every one of the N + 1 predictions, averaged (the task computes it, ``tasks/fewshot/metrics.py``).
- ``prototype_only=True`` is the baseline without MIFE fusion and attention: the same backbone and mid-level
  features, MAP + cosine (one logit map). ``num_iters`` defaults to 4, the trade-off the paper's Table 3 reports.

Deviations:
- Any input size >= 32 and any K >= 1; query and support sizes may differ (attention is global, masks are pooled
  to each map's size). The paper uses 256x256 slices.
- No supervoxel self-supervision inside the model: pseudo-labels are a data source of the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.cross_masked import CrossMaskedAttention
from ..layers.checks import check_config, check_image
from ..layers.mlp import Mlp
from ..layers.model import VisionModel, call_block, random_tensor
from ..layers.partition import is_symbolic, symbolic_reshape
from ..layers.pool import averaging_matrix
from ..layers.resnet import ResNet, resnet_remap_state_dict
from ..registry import register_models

__all__ = ["CATNetConfig", "CATNet", "masked_average", "prior_mask"]


@dataclass(frozen=True, kw_only=True)
class CATNetConfig:
    """CAT-Net hyper-parameters (see the module docstring for where each default comes from)."""

    in_chans: int = 3
    depths: tuple[int, ...] = (3, 4, 6, 3)       # ResNet blocks per stage
    widths: tuple[int, ...] = (64, 128, 256, 512)  # ResNet bottleneck widths (stage outputs are 4x)
    stem_width: int = 64
    output_stride: int = 8                       # 8: dilate layer3 + layer4; 16: layer4; 32: none
    dim: int = 256                               # feature width of MIFE and CMAT
    num_iters: int = 4                           # CMAT modules (paper Table 3: 4 is the trade-off)
    num_heads: int = 8
    mlp_ratio: float = 8.0
    directions: str = "both"                     # cross attention S<->Q ("both"), "s2q" or "q2s"
    query_mask: str = "hard"                     # Q->S mask: "hard" (prediction > 0.5) or "soft" (probability)
    proto_scale: float = 20.0                    # cosine logit scale (ADNet / SSL-ALPNet)
    prototype_only: bool = False                 # baseline: MAP + cosine on the mid-level features
    norm_eps: float = 1e-5
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_config(self, positive=("in_chans", "depths", "widths", "stem_width", "output_stride", "dim", "num_iters",
                                     "num_heads", "mlp_ratio", "proto_scale", "norm_eps", "bn_eps"))


def masked_average(feats: Tensor, mask: Tensor, eps: float = 1e-5) -> Tensor:
    """Masked average pooling over tokens. Shape: feats (B, N, C), mask (B, N) -> (B, C)."""
    return (feats * mask[..., None]).sum(1) / (mask.sum(1, keepdim=True) + eps)


def prior_mask(query: Tensor, support: Tensor, mask: Tensor, shots: int) -> Tensor:
    """PFENet's prior: per query pixel, the best cosine similarity to a support foreground pixel, min-max normalised
    per image, averaged over the shots.

    Shape: query (B, Nq, C), support (B*K, Ns, C), mask (B*K, Ns) -> (B, Nq) in [0, 1].
    """
    B, _, C = query.shape
    q = F.normalize(query, dim=-1)
    s = F.normalize(support * (mask[..., None] > 0), dim=-1)           # background pixels -> zero vectors
    if is_symbolic(*query.shape, *support.shape):
        # Traced (torch.export / ONNX): one bmm over a contiguous copy; einsum folds its batch dimensions with
        # reshapes that guard on sizes not being 1.
        s = symbolic_reshape(s, (B, -1, C))                            # (B, K*Ns, C)
        sim = torch.bmm(q, s.transpose(1, 2))                          # (B, Nq, K*Ns)
        best = sim.view(B, sim.shape[1], shots, -1).amax(dim=-1).transpose(1, 2)  # (B, K, Nq)
    else:
        s = s.view(B, shots, -1, C)                                    # (B, K, Ns, C)
        sim = torch.einsum("bqc,bksc->bkqs", q, s)                     # (B, K, Nq, Ns)
        best = sim.amax(dim=-1)                                        # (B, K, Nq)
    lo, hi = best.amin(dim=-1, keepdim=True), best.amax(dim=-1, keepdim=True)
    return ((best - lo) / (hi - lo + 1e-7)).mean(dim=1)                # (B, Nq)


def repeat_shots(x: Tensor, shots: int) -> Tensor:
    """Each sample once per shot, ``x.repeat_interleave(shots, dim=0)``. Shape: (B, ...) -> (B*K, ...).

    Traced with a symbolic shot count it is an expand and a reshape of a contiguous copy (the same values).
    """
    if not is_symbolic(shots, *x.shape):
        return x.repeat_interleave(shots, dim=0)
    x = x[:, None].expand(x.shape[0], shots, *x.shape[1:])            # (B, K, ...)
    return symbolic_reshape(x, (-1, *x.shape[2:]))                     # (B*K, ...)


def area_fractions(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling of masks to ``size``: each feature pixel's foreground fraction.

    Shape: (N, 1, Hs, Ws) -> (N, 1, h, w). Traced with symbolic sizes it multiplies by the bin-averaging matrices
    instead: PyTorch's decomposition of ``adaptive_avg_pool2d`` branches on whether the sizes divide (guards that
    would freeze them), and ONNX has no adaptive pooling to other than 1 x 1. The bins are the same,
    ``[floor(i * Hs / h), ceil((i + 1) * Hs / h))``, so the values agree to rounding.
    """
    if not is_symbolic(*mask.shape, *size):
        return F.adaptive_avg_pool2d(mask, size)
    N, _, Hs, Ws = mask.shape
    h, w = size
    rows = torch.mm(mask.reshape(N * Hs, Ws), _bin_average(Ws, w, mask).t())     # (N*Hs, w)
    rows = rows.view(N, Hs, w).transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (N, w, Hs)
    pooled = torch.mm(rows.view(N * w, Hs), _bin_average(Hs, h, mask).t())        # (N*w, h)
    return pooled.view(N, w, h).transpose(1, 2).clone(memory_format=torch.contiguous_format)[:, None]  # (N, 1, h, w)


def _bin_average(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """(size_out, size_in) matrix whose row i averages adaptive pooling's bin i of a length-``size_in`` axis."""
    i = torch.arange(size_out, device=like.device)
    start = torch.div(i * size_in, size_out, rounding_mode="floor")
    end = torch.div((i + 1) * size_in + size_out - 1, size_out, rounding_mode="floor")
    return averaging_matrix(start, end, size_in, like.dtype)            # (size_out, size_in)


class PrototypeSegmentation(nn.Module):
    """logit = scale * cos(query feature, MAP prototype of the support foreground) - t(query) (ADNet)."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.scale = scale
        self.threshold = nn.Linear(dim, 1)

    def forward(self, query: Tensor, support: Tensor, mask: Tensor) -> Tensor:
        """Shape: query (B, Nq, C), support (B, K*Ns, C), mask (B, K*Ns) -> (B, Nq) logits."""
        proto = masked_average(support, mask)                          # (B, C)
        cos = F.cosine_similarity(query, proto[:, None], dim=-1, eps=1e-7)  # (B, Nq)
        return self.scale * cos - self.threshold(query.mean(dim=1))


class CMAT(nn.Module):
    """One cross masked attention transformer: self-attention, cross masked attention, MLP per branch; then
    prototype segmentation of the query."""

    def __init__(self, config: CATNetConfig):
        super().__init__()
        dim, c = config.dim, config
        self.attn_q = CrossMaskedAttention(dim, num_heads=c.num_heads, norm_eps=c.norm_eps,
                                           cross=c.directions in ("both", "s2q"))
        self.attn_s = CrossMaskedAttention(dim, num_heads=c.num_heads, norm_eps=c.norm_eps,
                                           cross=c.directions in ("both", "q2s"))
        hidden = int(dim * c.mlp_ratio)
        self.mlp_q = Mlp(dim, hidden, act_layer=nn.ReLU)
        self.norm_q = nn.LayerNorm(dim, eps=c.norm_eps)
        self.mlp_s = Mlp(dim, hidden, act_layer=nn.ReLU)
        self.norm_s = nn.LayerNorm(dim, eps=c.norm_eps)
        self.proto = PrototypeSegmentation(dim, c.proto_scale)
        self.query_mask = c.query_mask

    def forward(self, fq: Tensor, fs: Tensor, ms: Tensor, prev_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Shape: fq (B, Nq, C), fs (B*K, Ns, C), ms (B*K, Ns), prev_logits (B, Nq) -> fq, fs, logits (B, Nq)."""
        B, _, C = fq.shape
        K = fs.shape[0] // B
        prob = prev_logits.detach().sigmoid()                          # Mask2Former: no gradient through the mask
        mq = (prob > 0.5).to(fq.dtype) if self.query_mask == "hard" else prob
        q = self.attn_q.self_attend(fq)
        s = self.attn_s.self_attend(fs)
        s_all, ms_all = symbolic_reshape(s, (B, -1, C)), ms.reshape(B, -1)  # (B, K*Ns, C), (B, K*Ns): all shots
        q_new = self.attn_q.cross_attend(q, s_all, ms_all)             # S->Q
        q_rep = repeat_shots(q, K)                                     # (B*K, Nq, C)
        s_new = self.attn_s.cross_attend(s, q_rep, repeat_shots(mq, K))  # Q->S
        q_new = self.norm_q(q_new + self.mlp_q(q_new))
        s_new = self.norm_s(s_new + self.mlp_s(s_new))
        logits = self.proto(q_new, symbolic_reshape(s_new, (B, -1, C)), ms_all)  # support: (B, K*Ns, C)
        return q_new, s_new, logits


class CATNet(VisionModel):
    """CAT-Net for 1-way K-shot segmentation: query image + K support images and masks -> N + 1 query logit maps.

    Args:
        config: a :class:`CATNetConfig`.
    """

    task = "fewshot"
    config_class = CATNetConfig
    min_input_size = 32
    # forward's positional inputs: the query, the support images, their masks (the exported graphs' input names)
    input_names = ("x", "support", "support_mask")
    # Tiny ResNet and transformer: every code path (dilation, MIFE, both cross directions, 2 iterations). The soft
    # query mask keeps Q->S attention alive at random init, where a hard mask may be empty and then (by design)
    # passes no gradient; the hard path and K > 1 are tested in tests/test_catnet.py.
    test_overrides: dict[str, Any] = {"depths": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8, "dim": 32,
                                      "num_heads": 4, "num_iters": 2, "mlp_ratio": 2.0, "query_mask": "soft"}
    test_mismatch_overrides: dict[str, Any] = {"dim": 48}

    def __init__(self, config: CATNetConfig):
        super().__init__()
        if config.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {config.output_stride}")
        if config.directions not in ("both", "s2q", "q2s"):
            raise ValueError(f"directions must be 'both', 's2q' or 'q2s', got {config.directions!r}")
        if config.query_mask not in ("hard", "soft"):
            raise ValueError(f"query_mask must be 'hard' or 'soft', got {config.query_mask!r}")
        self.config = config
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[config.output_stride]
        self.backbone = ResNet(depths=config.depths, widths=config.widths, stem_width=config.stem_width,
                               in_chans=config.in_chans, dilate=dilate, bn_eps=config.bn_eps)
        info = self.backbone.feature_info
        dim = config.dim
        # PFENet's down_query / down_supp, one conv for both branches.
        self.reduce = nn.Sequential(nn.Conv2d(info[1]["num_chs"] + info[2]["num_chs"], dim, 1, bias=False),
                                    nn.ReLU(inplace=True))
        if config.prototype_only:
            self.proto = PrototypeSegmentation(dim, config.proto_scale)
        else:
            self.merge = nn.Sequential(nn.Conv2d(2 * dim + 1, dim, 1, bias=False), nn.ReLU(inplace=True))
            self.classifier = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True),
                                            nn.Conv2d(dim, 1, 1))
            self.cmat = nn.ModuleList(CMAT(config) for _ in range(config.num_iters))
        self.feature_info = info
        self.grad_checkpointing = False

    @property
    def num_outputs(self) -> int:
        """Logit maps per query: 1 for the baseline, else M_0 (MIFE) and one per CMAT module."""
        return 1 if self.config.prototype_only else self.config.num_iters + 1

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (input_shape[0], self.num_outputs, *input_shape[2:])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.backbone.set_grad_checkpointing(enable)

    # --- inputs ---------------------------------------------------------------------------------------------------

    def _check_inputs(self, x: Tensor, support: Tensor | None, support_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Validate and return support (B, K, C, Hs, Ws) and its float mask (B, K, Hs, Ws)."""
        c = self.config
        check_image(x, c.in_chans, who="CATNet query", min_size=self.min_input_size)
        if support is None or support_mask is None:
            raise ValueError("CATNet needs support images and masks: model(query, support=(B, K, C, H, W), "
                             "support_mask=(B, K, H, W)); K = 1 may drop the K axis")
        if not isinstance(support, Tensor) or not isinstance(support_mask, Tensor):
            raise ValueError("support and support_mask must be tensors")
        if support.ndim == 4:
            support = support[:, None]                                 # (B, 1, C, Hs, Ws)
            if support_mask.ndim == 4 and support_mask.shape[1] != 1:
                raise ValueError(f"with one support image per query, support_mask must be (B, 1, H, W) or "
                                 f"(B, H, W), got {tuple(support_mask.shape)}")
            support_mask = support_mask.reshape(support_mask.shape[0], 1, *support_mask.shape[-2:])
        elif support.ndim == 5:
            if support_mask.ndim == 5 and support_mask.shape[2] == 1:
                support_mask = support_mask[:, :, 0]                   # (B, K, Hs, Ws)
        else:
            raise ValueError(f"support must be (B, K, C, H, W) or (B, C, H, W), got shape {tuple(support.shape)}")
        B, K = support.shape[:2]
        if B != x.shape[0]:
            raise ValueError(f"support batch {B} differs from query batch {x.shape[0]}")
        check_image(support.flatten(0, 1), c.in_chans, who="CATNet support", min_size=self.min_input_size)
        if support_mask.ndim != 4 or tuple(support_mask.shape) != (B, K, *support.shape[-2:]):
            raise ValueError(f"support_mask shape {tuple(support_mask.shape)} does not match the support images "
                             f"{tuple(support.shape)}: expected ({B}, {K}, {support.shape[-2]}, {support.shape[-1]})")
        mask = support_mask.to(x.dtype)
        if torch.compiler.is_compiling() or mask.device.type == "meta":
            # The value checks below read tensor data (a host sync, and a data-dependent branch that breaks a
            # torch.compile fullgraph); compiled code trusts its inputs, eager validates them. Meta tensors (FLOP
            # counting) have no data to check.
            return support, mask
        if bool(((mask < 0) | (mask > 1)).any()):
            raise ValueError("support_mask values must lie in [0, 1] (0 background, 1 foreground)")
        empty = (mask.flatten(2).amax(dim=-1) == 0).nonzero()
        if len(empty):
            b, k = empty[0].tolist()
            raise ValueError(f"support mask of query {b}, shot {k} is empty: a support image needs foreground")
        return support, mask

    def example_inputs(self, batch: int = 2, size: int | tuple[int, int] | None = None, *, frames: int | None = None,
                       dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None, shots: int = 1,
                       support_size: int | tuple[int, int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """A query, its support images and their masks: ``model(*model.example_inputs())``.

        Arguments as :meth:`VisionModel.example_inputs`, and (the few-shot models' own):
            shots: support images per query, K (default 1, the paper's 1-shot setting; ``visattn.export`` traces 2).
            support_size: the support images' height and width (default the query's; ``visattn.export`` traces
                another size, the two being independent).

        Returns:
            query (B, C, H, W) and support (B, K, C, Hs, Ws), standard normal; support_mask (B, K, Hs, Ws), binary,
            none empty.
        """
        (x,) = super().example_inputs(batch, size, frames=frames, dtype=dtype, device=device, generator=generator)
        if not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be a positive int, got {shots!r}")
        H, W = x.shape[-2:]
        Hs, Ws = self._example_size((H, W) if support_size is None else support_size)
        support = random_tensor(torch.randn, (batch, shots, x.shape[1], Hs, Ws), dtype=x.dtype, device=x.device,
                                generator=generator)
        mask = random_tensor(torch.rand, (batch, shots, Hs, Ws), dtype=x.dtype, device=x.device, generator=generator)
        mask = (mask > 0.5).to(x.dtype)
        mask[..., 0, 0] = 1                                            # a support mask must not be empty
        return x, support, mask

    # --- forward --------------------------------------------------------------------------------------------------

    def _features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Mid-level (reduced) and high-level maps at layer2's resolution. Shape: (N, C, H, W) -> (N, dim, h, w),
        (N, C4, h, w)."""
        _, f2, f3, f4 = self.backbone.forward_intermediates(images)
        size = f2.shape[-2:]
        if f3.shape[-2:] != size:
            f3 = F.interpolate(f3, size=size, mode="bilinear", align_corners=False)
        if f4.shape[-2:] != size:
            f4 = F.interpolate(f4, size=size, mode="bilinear", align_corners=False)
        return self.reduce(torch.cat([f2, f3], dim=1)), f4

    def forward(self, x: Tensor, support: Tensor | None = None, support_mask: Tensor | None = None) -> Tensor:
        """Segment the query ``x`` given K support images and their foreground masks.

        ``support`` and ``support_mask`` may be passed by name or by position (``model(*model.example_inputs())``,
        the order of ``input_names`` and of the exported graphs' inputs); both are required.

        Args:
            x: query images (B, C, H, W).
            support: support images (B, K, C, Hs, Ws), or (B, C, Hs, Ws) for K = 1.
            support_mask: binary (or [0, 1]) foreground masks (B, K, Hs, Ws) / (B, K, 1, Hs, Ws), or (B, 1, Hs, Ws)
                / (B, Hs, Ws) for K = 1; none may be empty.

        Shape:
            returns logits (B, S, H, W): S = num_iters + 1 predictions (M_0 from MIFE, then one per CMAT module;
            the last is the final prediction), or S = 1 with ``prototype_only``.
        """
        support, mask = self._check_inputs(x, support, support_mask)
        B, K = support.shape[:2]
        H, W = x.shape[-2:]
        fq, hq = self._features(x)                                     # (B, dim, h, w), (B, C4, h, w)
        fs, hs = self._features(support.flatten(0, 1))                 # (B*K, dim, hs, ws), (B*K, C4, hs, ws)
        h, w = fq.shape[-2:]
        ms = area_fractions(mask.flatten(0, 1)[:, None], fs.shape[-2:])  # (B*K, 1, hs, ws)
        q_tok = fq.flatten(2).transpose(1, 2)                          # (B, h*w, dim)
        s_tok = fs.flatten(2).transpose(1, 2)                          # (B*K, hs*ws, dim)
        ms_tok = ms.flatten(1)                                         # (B*K, hs*ws)
        if self.config.prototype_only:
            s_all = symbolic_reshape(s_tok, (B, -1, s_tok.shape[-1]))  # (B, K*hs*ws, dim)
            logits = self.proto(q_tok, s_all, ms_tok.reshape(B, -1))[:, None]
            return self._upsample(logits, (h, w), (H, W))

        # MIFE: prototype + prior (query) / mask (support) concatenated, merged, initial query mask.
        s_all = symbolic_reshape(s_tok, (B, -1, s_tok.shape[-1]))      # (B, K*hs*ws, dim)
        proto = masked_average(s_all, ms_tok.reshape(B, -1))           # (B, dim)
        prior = prior_mask(hq.flatten(2).transpose(1, 2), hs.flatten(2).transpose(1, 2), ms_tok, K)  # (B, h*w)
        fq = self.merge(torch.cat([fq, proto[:, :, None, None].expand(-1, -1, h, w), prior.view(B, 1, h, w)], 1))
        proto_s = repeat_shots(proto, K)[:, :, None, None].expand(-1, -1, *fs.shape[-2:])
        fs = self.merge(torch.cat([fs, proto_s, ms], dim=1))
        logits = [self.classifier(fq).flatten(1)]                      # M_0: (B, h*w)

        # CMAT iterations, each refining both branches and the query mask.
        q_tok, s_tok = fq.flatten(2).transpose(1, 2), fs.flatten(2).transpose(1, 2)
        for block in self.cmat:  # three outputs each, and every module's logits are kept: no run_blocks chain
            q_tok, s_tok, out = call_block(block, q_tok, s_tok, ms_tok, logits[-1],
                                           checkpointing=self.grad_checkpointing)
            logits.append(out)
        return self._upsample(torch.stack(logits, dim=1), (h, w), (H, W))

    @staticmethod
    def _upsample(logits: Tensor, size: tuple[int, int], out: tuple[int, int]) -> Tensor:
        maps = logits.view(logits.shape[0], logits.shape[1], *size)    # (B, S, h, w)
        return F.interpolate(maps, size=out, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, x: Tensor, *, support: Tensor, support_mask: Tensor) -> Tensor:
        """Foreground probability of the final prediction. Shape: (B, C, H, W) -> (B, H, W)."""
        return self(x, support=support, support_mask=support_mask)[:, -1].sigmoid()

    @staticmethod
    def remap_state_dict(state_dict: dict[str, Tensor], model: "CATNet") -> dict[str, Tensor]:
        """visattn keys pass through; a torchvision ResNet checkpoint (``conv1.weight``, ``layer1.0...``, ``fc``)
        lands under ``backbone.`` with ``fc`` dropped (load it with ``strict=False``, or into ``model.backbone``)."""
        if "conv1.weight" in state_dict and not any(k.startswith("backbone.") for k in state_dict):
            return {f"backbone.{k}": v for k, v in resnet_remap_state_dict(state_dict, model.backbone).items()}
        return dict(state_dict)


VARIANTS = {
    "catnet_r50": CATNetConfig(depths=(3, 4, 6, 3)),
    "catnet_r101": CATNetConfig(depths=(3, 4, 23, 3)),
}

# No reference implementation exists (see the docstring): these are this implementation's counts, measured on the
# built models. Decomposition in docs/catnet.md: ResNet without fc (23,508,032 / 42,500,160, torchvision's counts
# minus 2,049,000) + reduce + merge + classifier + 4 CMAT modules.
REFERENCE_PARAMS = {
    "catnet_r50": 37_253_957,    # 23,508,032 ResNet-50 + 393,216 reduce + 131,328 merge + 590,337 classifier
                                 # + 4 x 3,157,761 CMAT
    "catnet_r101": 56_246_085,   # 42,500,160 ResNet-101 + the same 13,745,925
}

register_models(CATNet, VARIANTS, reference_params=REFERENCE_PARAMS)
