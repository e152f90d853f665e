"""A short MaxViT demo on a real built-in photo: build, count parameters, run at the photo's own size, print.

    python -m visattn.demo [--model maxvit_tiny] [--image chelsea|astronaut|coffee]

The photos ship inside scikit-image (the ``data`` extra); nothing is downloaded. The weights are random (no
checkpoint can be fetched here), so the printed classes mean nothing; what the demo shows is that a full-size model
runs on a 300x451 photo, a size timm's MaxViT rejects, and how the feature pyramid and the time look.
"""

from __future__ import annotations

import argparse
import time

import torch

import visattn


def load_photo(name: str) -> torch.Tensor:
    """(1, 3, H, W) float tensor in [0, 1] of a scikit-image sample photo, normalised with ImageNet statistics."""
    try:
        import skimage.data
    except ImportError as err:
        raise SystemExit("the demo needs scikit-image: pip install 'visattn[data]'") from err
    image = getattr(skimage.data, name)()                              # (H, W, 3) uint8
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255   # (1, 3, H, W)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="maxvit_tiny")
    parser.add_argument("--image", default="chelsea", choices=["chelsea", "astronaut", "coffee"])
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = visattn.create_model(args.model).eval()
    params = sum(p.numel() for p in model.parameters())
    reference = visattn.registry.reference_params(args.model)
    x = load_photo(args.image)
    print(f"model        {args.model}: {params:,} parameters (reference implementation: {reference:,})")
    print(f"input        skimage.data.{args.image}(): {tuple(x.shape)}")
    with torch.inference_mode():
        start = time.perf_counter()
        feats = model.forward_intermediates(x, intermediates_only=True)
        logits = model.forward_head(feats[-1])
        elapsed = time.perf_counter() - start
    for i, f in enumerate(feats):
        print(f"stage {i + 1}      {tuple(f.shape)}")
    probs = logits.softmax(-1)[0]
    top = probs.topk(5)
    print(f"logits       {tuple(logits.shape)}, finite: {bool(torch.isfinite(logits).all())}")
    print("top-5        " + ", ".join(f"class {i}: {p:.4f}" for p, i in zip(top.values.tolist(), top.indices.tolist())))
    print(f"time         {elapsed * 1e3:.0f} ms on {torch.get_num_threads()} thread(s) (random weights)")


if __name__ == "__main__":
    main()
