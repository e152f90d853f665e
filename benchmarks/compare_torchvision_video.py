"""visattn's video MViTs vs torchvision's on the same weights: inference speed, training step, peak memory.

Runs in the reference environment (torchvision importable; visattn imported from this checkout's src/):

    REF/bin/python benchmarks/compare_torchvision_video.py                   # inference, fp32, batch 1, 16x224x224
    REF/bin/python benchmarks/compare_torchvision_video.py --train           # + one training step each
    REF/bin/python benchmarks/compare_torchvision_video.py --profile mvitv2_small_video   # op table of visattn's call

Pairs: ``mvit_v1_base_16x4`` = torchvision ``mvit_v1_b``, ``mvitv2_small_video`` = ``mvit_v2_s``. torchvision's random
init is loaded into visattn (``load_pretrained`` maps torchvision's keys), the logits are compared first, then both
models are timed in alternating rounds in one process (see ``compare_timm.alternate``), so load from other processes
hits both alike. Peak memory is that of live tensors (``visattn.bench.peak_memory``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import visattn
from compare_timm import alternate, train_step
from visattn import machine
from visattn.bench import peak_memory

PAIRS = {
    "mvit_v1_base_16x4": "mvit_v1_b",
    "mvitv2_small_video": "mvit_v2_s",
}


def build(ours_name: str, tv_name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import torchvision

    torch.manual_seed(0)
    theirs = getattr(torchvision.models.video, tv_name)(weights=None)
    ours = visattn.create_model(ours_name)
    visattn.load_pretrained(ours, theirs.state_dict())
    return ours, theirs


def inference(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict:
    ours.eval()
    theirs.eval()
    with torch.inference_mode():
        diff = (ours(x) - theirs(x)).abs().max().item()
        t = alternate({"tv": lambda: theirs(x), "ours": lambda: ours(x)}, args.rounds, args.iters)
        mem = {k: peak_memory(lambda m=m: m(x), x.device) for k, m in (("tv", theirs), ("ours", ours))}
    return {"diff": diff, "tv_s": t["tv"][0], "ours_s": t["ours"][0], "tv_cpu": t["tv"][1],
            "ours_cpu": t["ours"][1], "tv_mib": mem["tv"], "ours_mib": mem["ours"]}


def training(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict:
    y = torch.randint(0, 400, (x.shape[0],))
    fns = {}
    # copies: the steps change the weights, which would leave the models no longer equal for later comparisons
    for key, model in (("tv", copy.deepcopy(theirs)), ("ours", copy.deepcopy(ours))):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        fns[key] = lambda m=model, o=opt: train_step(m, o, x, y, None)  # fp32
    t = alternate(fns, args.train_rounds, 1)
    mem = {k: peak_memory(fn, x.device) for k, fn in fns.items()}
    return {"tv_s": t["tv"][0], "ours_s": t["ours"][0], "tv_mib": mem["tv"], "ours_mib": mem["ours"]}


def profile(model: torch.nn.Module, x: torch.Tensor, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model.eval()
    with torch.inference_mode():
        model(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS), help=f"comma-separated subset of {list(PAIRS)}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=1, help="forward passes per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also time a training step (fp32)")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--profile", metavar="MODEL", help="print the op profile of visattn's MODEL and stop")
    parser.add_argument("--profile-torchvision", action="store_true", help="with --profile: profile torchvision's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import torchvision

    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, generator=torch.Generator().manual_seed(0))
    if args.profile:
        ours, theirs = build(args.profile, PAIRS[args.profile])
        profile(theirs if args.profile_torchvision else ours, x, 30)
        return
    print(machine.describe())
    print(f"{torch.get_num_threads()} threads; torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"\nInference, fp32 eval, batch {args.batch} at {args.frames}x{args.size}x{args.size}, {args.rounds} "
          f"alternating rounds of {args.iters} (clips/s; ratio = visattn / torchvision)")
    print("| model | max abs diff | torchvision clips/s | visattn clips/s | ratio (wall) | ratio (CPU time) "
          "| peak MiB torchvision | peak MiB visattn |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    built = {}
    for name in args.models.split(","):
        ours, theirs = build(name, PAIRS[name])
        built[name] = (ours, theirs)
        r = inference(ours, theirs, x, args)
        print(f"| {name} | {r['diff']:.1e} | {args.batch / r['tv_s']:.3f} | {args.batch / r['ours_s']:.3f} "
              f"| {r['tv_s'] / r['ours_s']:.2f} | {r['tv_cpu'] / r['ours_cpu']:.2f} | {r['tv_mib']:.0f} "
              f"| {r['ours_mib']:.0f} |", flush=True)
    if args.train:
        xt = x[:1].expand(args.train_batch, -1, -1, -1, -1).contiguous()
        print(f"\nTraining step, fp32, batch {args.train_batch}: forward + cross-entropy + backward + AdamW, "
              f"{args.train_rounds} alternating rounds (s; ratio = torchvision / visattn time)")
        print("| model | torchvision s | visattn s | ratio | peak MiB torchvision | peak MiB visattn | memory ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (ours, theirs) in built.items():
            r = training(ours, theirs, xt, args)
            print(f"| {name} | {r['tv_s']:.2f} | {r['ours_s']:.2f} | {r['tv_s'] / r['ours_s']:.2f} "
                  f"| {r['tv_mib']:.0f} | {r['ours_mib']:.0f} | {r['ours_mib'] / r['tv_mib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
