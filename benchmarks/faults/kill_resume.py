"""kill -9 at random points of a training run, then ``visattn train --resume``: is the result bit-identical?

Each trial starts the same tiny deterministic run (MaxViT 0.03M, digits, 2 epochs x 3 steps, a checkpoint after
every step, EMA on), kills it with SIGKILL at a random point and resumes it until it completes; the final
``model.safetensors`` (EMA weights) and ``summary.json`` metrics are compared with an uninterrupted run's.
Kill points alternate between a random wall-clock moment (anywhere in start-up, training, evaluation or saving)
and a random checkpoint's save, between writing its files and renaming them into place
(``VISATTN_FAULT_KILL_IN_SAVE``). A run killed before its first checkpoint starts again from scratch.

    python benchmarks/faults/kill_resume.py                   # 6 trials, about 2 minutes on 2 shared cores
    python benchmarks/faults/kill_resume.py --trials 20 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _common import TINY_MODEL, cli_command, cli_env, print_table, run_cli

RUN = [*TINY_MODEL, "--data", "digits", "--train-limit", "48", "--val-limit", "24", "--batch-size", "16",
       "--epochs", "2", "--save-every", "1", "--deterministic", "--ema", "0.9", "--threads", "1", "--log-every", "1"]
STEPS = 6


def _final(run: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    summary = json.loads((run / "summary.json").read_text())
    return load_file(run / "model.safetensors"), {k: v for k, v in summary.items()
                                                  if k not in ("out", "img_per_s", "epoch_time_s")}


def _identical(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    import torch

    (wa, sa), (wb, sb) = a, b
    return sa == sb and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _complete(run: Path) -> tuple[int, str]:
    """Resume (or restart, if no checkpoint was written) until the run completes; (resumes, last stderr)."""
    from visattn.checkpoint import latest_checkpoint

    for attempt in range(3):
        args = ["train", "--resume", str(run)] if latest_checkpoint(run) else ["train", *RUN, "--out", str(run)]
        proc = run_cli(*args)
        if proc.returncode == 0:
            return attempt + 1, proc.stderr
    raise RuntimeError(f"{run} did not complete after 3 resumptions:\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="visattn_kill_"))
    start = time.perf_counter()
    proc = run_cli("train", *RUN, "--out", str(work / "reference"))
    reference_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{proc.stderr}")
    reference = _final(work / "reference")
    rows = []
    for t in range(args.trials):
        run = work / f"trial{t}"
        if t % 2 == 0:                                             # a random moment of the whole run
            delay = rng.uniform(0.3, 1.0) * reference_s
            child = subprocess.Popen(cli_command("train", *RUN, "--out", str(run)), env=cli_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            killed = child.poll() is None
            if killed:
                child.send_signal(signal.SIGKILL)
            child.wait()
            point = f"t={delay:.1f}s" + ("" if killed else " (finished first)")
        else:                                                      # inside a random checkpoint's save
            step = rng.randint(1, STEPS)
            proc = run_cli("train", *RUN, "--out", str(run), env={"VISATTN_FAULT_KILL_IN_SAVE": f"step{step:08d}"})
            killed = proc.returncode == -signal.SIGKILL
            point = f"saving step {step}"
        from visattn.checkpoint import latest_checkpoint

        latest = latest_checkpoint(run)
        resumes, _ = _complete(run) if killed or not (run / "summary.json").exists() else (0, "")
        same = _identical(_final(run), reference)
        rows.append({"trial": t, "kill point": point, "killed": killed,
                     "resumed from": latest.name if latest else "(none: restarted)", "runs to finish": resumes,
                     "bit-identical": same})
        print(f"trial {t}: {rows[-1]}", flush=True)
    print()
    print(f"reference run {reference_s:.1f}s; work folder {work}")
    print_table(rows, ["trial", "kill point", "killed", "resumed from", "runs to finish", "bit-identical"])
    killed = [r for r in rows if r["killed"]]
    print(f"\n{sum(r['bit-identical'] for r in killed)} of {len(killed)} killed runs resumed bit-identical to the "
          f"uninterrupted run ({sum(r['bit-identical'] for r in rows)} of {len(rows)} trials in all)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
