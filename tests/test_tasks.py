"""The task layer as plug-ins: a task registered from this file trains and evaluates through the unchanged command
line; the registry's errors; options as flags; the import graph stays one-way."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visattn.cli import main
from visattn.tasks import get_task, list_tasks, options_from_dict, register_task, unregister_task
from visattn.tasks.base import EvalContext, Task

SRC = Path(__file__).resolve().parents[1] / "src" / "visattn"
TINY_MAXVIT = ["--model", "maxvit_tiny", "--set", "stem_width=8", "--set", "dims=8,16", "--set", "depths=1,1",
               "--set", "head_dim=8", "--set", "partition_size=4"]
# LayerNorm only: a few steps suffice (BatchNorm running statistics lag behind in runs this short)
TINY_DAVIT = ["--model", "davit_tiny", "--set", "dims=8,16", "--set", "depths=1,1", "--set", "num_heads=1,2",
              "--set", "window_size=4"]


# --- a toy task, registered here: which half of a noise image is brighter -------------------------------------------

@dataclass(frozen=True)
class HalvesOptions:
    count: int = field(default=64, metadata={"help": "images per split"})


def _halves(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 2, (n,), generator=g)
    x[y == 0, :, :, :16] += 0.5                                        # class 0: left half brighter
    x[y == 1, :, :, 16:] += 0.5
    return torch.utils.data.TensorDataset(x, y)


class Halves(Task):
    main_metric = "val_acc"
    img_size = 32

    def __init__(self, options: HalvesOptions):
        self.options = options
        self.train_set, self.val_set = _halves(options.count, 0), _halves(options.count, 1)

    @classmethod
    def for_training(cls, run, options):
        return cls(options)

    @classmethod
    def for_evaluation(cls, meta, options, source=None, *, limit=None, split="val"):
        return cls(options)

    def model_overrides(self):
        return {"num_classes": 2}

    def augment(self, batch, generator, global_batch, offset):
        return batch

    def loss(self, logits, targets):
        return F.cross_entropy(logits, targets)

    def evaluate(self, model, ctx: EvalContext):
        x, y = self.val_set.tensors
        with torch.no_grad():
            acc = (model.eval()(x).argmax(-1) == y).float().mean()
        model.train()
        return {"val_acc": 100 * float(acc), "val_count": len(y)}


@pytest.fixture
def halves_task():
    register_task("halves", Halves, options=HalvesOptions, help="toy: which half is brighter")
    yield "halves"
    unregister_task("halves")


def test_a_task_registered_here_trains_and_evaluates_through_the_cli(halves_task: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--task", halves_task, *TINY_DAVIT, "--count", "128", "--epochs", "3", "--batch-size",
                 "16", "--lr", "3e-3", "--warmup-epochs", "0", "--threads", "1", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_acc"] > 75, summary                          # it learnt the task, through the generic loop
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "halves" and meta["task_options"] == {"count": 128}
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["task"] == "halves" and report["val_acc"] == pytest.approx(summary["val_acc"])
    assert main(["train", "--resume", str(run), "--threads", "1"]) == 0      # nothing left: resumes to the end


def test_registry_errors(halves_task: str) -> None:
    assert halves_task in list_tasks() and {"classification", "sr", "denoise", "fewshot"} <= set(list_tasks())
    with pytest.raises(ValueError, match="already registered"):
        register_task(halves_task, Halves)
    with pytest.raises(ValueError, match="unknown task 'nope'.*halves"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"unknown options of task.*\['cuont'\].*count"):
        options_from_dict(HalvesOptions, {"cuont": 3}, what="options of task 'halves'")


def test_a_flag_of_another_task_is_refused(halves_task: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", *TINY_MAXVIT, "--count", "8", "--epochs", "1", "--out", str(tmp_path / "r")]) == 1
    assert "--count is an option of --task halves, not of --task classification" in capsys.readouterr().err


def test_a_model_of_another_kind_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--model", "mvitv2_small_video", "--epochs", "1", "--out", str(tmp_path / "r")]) == 1
    assert "is a video classification model; the 'classification' task trains image" in capsys.readouterr().err


# --- what predict prints for a classifier (images and videos alike) -------------------------------------------------

def test_top_classes_printing_and_the_end_of_predict(capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from visattn.tasks.base import PredictRequest
    from visattn.tasks.topk import class_names, finish_predictions, format_top, top_classes

    classes = class_names({}, 3)
    assert classes == ["0", "1", "2"] and class_names({"classes": ["a", "b"]}, 2) == ["a", "b"]
    preds = top_classes(torch.tensor([0.1, 0.6, 0.3]), classes, 5)                      # k capped at 3 classes
    assert [(p["class"], p["index"]) for p in preds] == [("1", 1), ("2", 2), ("0", 0)]
    assert format_top(preds[:2]) == "1 (0.600), 2 (0.300)"
    request = PredictRequest(inputs=["a.png", "b.png"], topk=2, json=True)
    assert finish_predictions([{"image": "a.png", "top": preds[:2]}], 1, request, "image") == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] == "1"
    assert "skipped 1 of 2 image(s)" in caplog.text
    with pytest.raises(ValueError, match="no readable video among the inputs"):
        finish_predictions([], 2, PredictRequest(inputs=["a.mp4", "b.mp4"]), "video")
    with pytest.raises(ValueError, match="--topk must be at least 1, got 0"):
        PredictRequest(inputs=["a.png"], topk=0)


# --- the import graph ----------------------------------------------------------------------------------------------

LAYERS = ["layers", "attention", "models", "tasks", "train", "cli"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "visattn" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _imports(path: Path) -> list[str]:
    pkg = "visattn." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.name == "__init__.py":
        pkg = pkg.rsplit(".", 1)[0] + ".__init__"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:-node.level]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module or "")
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_the_import_graph_is_one_way() -> None:
    """layers <- attention <- models <- tasks <- train <- cli: nothing imports a later layer (no task imports
    train.py back), lazily inside a function or not."""
    wrong = []
    for path in SRC.rglob("*.py"):
        own = _layer("visattn." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        if own is None:
            continue
        for module in _imports(path):
            other = _layer(module)
            if other is not None and other > own:
                wrong.append(f"{path.relative_to(SRC)} imports {module}")
    assert not wrong, wrong
