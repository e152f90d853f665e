"""``visattn export NAME``: a model as an ONNX file or a saved ``torch.export`` program.

    visattn export maxvit_tiny --format onnx --out maxvit_tiny.onnx
    visattn export maxvit_tiny --format torch-export --checkpoint runs/digits --out maxvit.pt2
    visattn export davit_tiny --format onnx --no-dynamic-size --size 224 --out davit_224.onnx

Batch, height and width (and frames, for video models) are dynamic by default (``--no-dynamic-size`` fixes the
sizes); in the ONNX file these dimensions are named ``batch``, ``height``, ``width`` (``frames``). Each step (build,
trace, convert, check) is logged as it starts; a missing output folder is created. The exported graph is run once at
the tracing size and compared with eager PyTorch before the command reports success. Models whose code would freeze
a dynamic size are refused with the dimension and the reason. Few-shot models (CAT-Net) are traced with random
support images (2 shots, a size of their own) and masks; the graph's inputs are ``x``, ``support`` (B, K, C, Hs, Ws)
and ``support_mask`` (B, K, Hs, Ws), the shot count and support size dynamic too.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="model -> ONNX (dynamic batch/H/W) or torch.export program",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="registered model name (see `visattn list`); with --checkpoint, its architecture")
    p.add_argument("--format", choices=("onnx", "torch-export"), default="onnx", help="output format (default onnx)")
    p.add_argument("--out", "-o", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--dynamic-size", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic height and width (default); --no-dynamic-size fixes them to --size")
    p.add_argument("--size", default=None, help="tracing size N or HxW (default: an odd size above the minimum)")
    p.add_argument("--checkpoint", "-c", help="run folder, checkpoint folder or .safetensors file to load")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weights and input dtype")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import torch

    from .. import export as ex
    from ..checkpoint import load_model
    from ..registry import create_model
    from ._common import parse_overrides, parse_sizes

    log = logging.getLogger("visattn")
    suffix = {"onnx": ".onnx", "torch-export": ".pt2"}[args.format]
    if Path(args.out).suffix != suffix:
        raise ValueError(f"--out must end in {suffix} for --format {args.format}, got {args.out}")
    overrides = parse_overrides(args.overrides)
    out = Path(args.out)
    log.info("building %s%s", args.name, f" from {args.checkpoint}" if args.checkpoint else " (random weights)")
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, model_name=args.name, overrides=overrides)
    else:
        model = create_model(args.name, **overrides)
    model.eval()
    size = parse_sizes(args.size)[0] if args.size else None
    inputs = ex.trace_inputs(model, size, dtype=ex.DTYPES[args.dtype])           # {"x": query, ...}
    example = inputs["x"]
    if not out.parent.exists():
        log.info("creating the output folder %s", out.parent)
        out.parent.mkdir(parents=True)
    kwargs = {"example": inputs, "dynamic_size": args.dynamic_size, "dtype": args.dtype}
    if args.format == "onnx":
        ex.to_onnx(model, out, opset=args.opset, **kwargs)
        if args.dtype == "bf16":  # measured: onnxruntime 1.31's CPU provider rejects bf16 Conv; nothing to check with
            log.warning(f"wrote {out} (bf16 ONNX, not checked: onnxruntime's CPU provider has no bf16 kernels)")
            return 0
        log.info("checking %s with onnxruntime against eager PyTorch", out.name)
        run_exported = _onnx_runner(out)
    else:
        ex.to_torch_export(model, out, **kwargs)
        log.info("checking %s (loaded back) against eager PyTorch", out.name)
        program = ex.load_torch_export(out)
        run_exported = program.module()
    with torch.no_grad():
        reference = model.to(example.dtype)(*inputs.values()).float()           # few-shot: x, support, support_mask
        got = torch.as_tensor(run_exported(*inputs.values())).float()
    diff = (got - reference).abs().max().item()
    sizes = "frames, height, width" if example.ndim == 5 else "height, width"         # video input: (B, C, T, H, W)
    fixed = "x".join(str(n) for n in example.shape[2:])
    dims = f"batch, {sizes}" if args.dynamic_size else f"batch ({fixed} fixed)"
    if "support" in inputs:                                                      # few-shot: the support inputs too
        dims += ", shots, support height, width" if args.dynamic_size else ", shots"
    log.info(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.format}, {args.dtype}, dynamic: {dims}); "
             f"max |exported - eager| at {example.shape[-2]}x{example.shape[-1]}: {diff:.2e}")
    return 0


def _onnx_runner(path):
    """A callable running the ONNX file with onnxruntime (tensor in, array out), or a clear error without it."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError("checking the ONNX file needs onnxruntime: pip install onnxruntime") from err
    runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    names = [i.name for i in runtime.get_inputs()]                        # x (and support, support_mask)

    def run(*tensors):
        return runtime.run(None, {n: t.cpu().numpy() for n, t in zip(names, tensors)})[0]

    return run
