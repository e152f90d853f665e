"""Numbers the papers report for the registered variants, printed beside ours by ``visattn list`` / ``info``.

Source: ../shared/reference/paper_tables.md (each family's results table at ImageNet-1K, 224 px, unless the note
says otherwise). FLOPs are the papers' "FLOPs", i.e. multiply-adds.
"""

from __future__ import annotations

# name -> (params in millions, GFLOPs (multiply-adds) at 224, ImageNet-1K top-1, note)
PAPER = {
    "maxvit_tiny": (31.0, 5.6, 83.62, "MaxViT Table 2"),
    "maxvit_small": (69.0, 11.7, 84.45, "MaxViT Table 2"),
    "maxvit_base": (120.0, 23.4, 84.95, "MaxViT Table 2 (README: 119M, 24.2G)"),
    "maxvit_large": (212.0, 43.9, 85.17, "MaxViT Table 2"),
    "maxvit_xlarge": (475.0, 97.8, None, "MaxViT README; no ImageNet-1K-only result"),
    "davit_tiny": (28.3, 4.5, 82.8, "DaViT official README"),
    "davit_small": (49.7, 8.8, 84.2, "DaViT official README"),
    "davit_base": (87.9, 15.5, 84.6, "DaViT official README"),
    "mvitv2_tiny": (24.0, 4.7, 82.3, "MViTv2 Table 2"),
    "mvitv2_small": (35.0, 7.0, 83.6, "MViTv2 Table 2"),
    "mvitv2_base": (52.0, 10.2, 84.4, "MViTv2 Table 2"),
    "mvitv2_large": (218.0, 42.1, 85.3, "MViTv2 Table 2"),
    "mvitv2_huge": (667.0, 120.6, 88.0, "MViTv2 Table 3 (ImageNet-21K pre-training)"),
    "cloformer_xxs": (4.2, 0.6, 77.0, "CloFormer (paperswithcode)"),
    "cloformer_xs": (7.2, 1.1, 79.8, "CloFormer (paperswithcode)"),
    "cloformer_s": (12.3, 2.0, 81.6, "CloFormer (paperswithcode)"),
}
