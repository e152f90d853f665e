"""Video classification for the shared training loop: one random clip per video in training, K x S views with
averaged softmax in evaluation (clip- and video-level top-1 / top-5), ``--shuffle-frames`` for the temporal test,
and ``visattn predict VIDEO`` with the clip timestamps used. ``FrameAverageTask`` is the order-blind baseline: an
image model classifies every frame and the logits are averaged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...distributed import DistInfo, all_reduce_sum
from ..base import DataError, EvalContext, PredictRequest, RunSettings, Task
from ..topk import class_names, finish_predictions, format_top, top_classes, topk_correct
from . import VideoOptions
from .data import (
    _VAL_NAMES,
    ClipSettings,
    VideoData,
    VideoDataset,
    _mix,
    _read_source,
    collate_eval,
    collate_train,
    load_video_data,
    read_source_for_classes,
)
from .io import VideoError, probe_video, read_frames
from .sampling import eval_clip_starts, frame_indices, parse_views, shuffle_clip_frames

__all__ = ["FrameAverageTask", "VideoTask", "load_clip"]

log = logging.getLogger("visattn")

KINETICS_MEAN = (0.45, 0.45, 0.45)      # PySlowFast DATA.MEAN / DATA.STD
KINETICS_STD = (0.225, 0.225, 0.225)
# (frames, stride, crop, hflip, mean, std) of a data source; the jitter range follows the crop (256-320 for 224)
_FOLDER_DEFAULTS = (16, 4, 224, 0.5, KINETICS_MEAN, KINETICS_STD)
_BUILTIN_DEFAULTS = (8, 2, 32, 0.0, (0.5,) * 3, (0.5,) * 3)             # flips would turn "right" into "left"
_DEFAULT_VIEWS = "5x1"


def _normalize(clips: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, 3, T, H, W) uint8 -> float ((x / 255) - mean) / std per channel."""
    m = torch.tensor(mean, device=clips.device).view(1, -1, 1, 1, 1)   # (1, 3, 1, 1, 1)
    s = torch.tensor(std, device=clips.device).view(1, -1, 1, 1, 1)    # (1, 3, 1, 1, 1)
    return (clips.float() / 255.0 - m) / s


def _clip_settings(meta: dict[str, Any], options: VideoOptions, builtin: bool, img_size: int | None) -> ClipSettings:
    frames, stride, crop, hflip, _, _ = _BUILTIN_DEFAULTS if builtin else _FOLDER_DEFAULTS
    frames = options.frames or meta.get("frames") or frames
    stride = options.stride or meta.get("stride") or stride
    crop = img_size or meta.get("img_size") or crop
    jitter = tuple(options.jitter or meta.get("jitter") or (round(crop * 256 / 224), round(crop * 320 / 224)))
    if builtin and not (options.jitter or meta.get("jitter")):
        jitter = (crop, round(crop * 1.25))                            # the 40 px videos at a 32 px crop: 32-40
    hflip = options.hflip if options.hflip is not None else meta.get("hflip", hflip)
    clips, crops = parse_views(options.views or meta.get("views") or _DEFAULT_VIEWS)
    # published weights (checkpoint.load_published_model) carry the publisher's evaluation resize: torchvision's
    # Kinetics MViTs scale the short side to 256 (224 / crop_pct) with VideoClassification's arithmetic; another
    # crop (`show attention --img-size`) keeps that ratio
    eval_short = meta.get("resize_size")
    if eval_short is not None and meta.get("img_size") and crop != meta["img_size"]:
        eval_short = round(eval_short * crop / meta["img_size"])
    resize = "torchvision" if meta.get("transform") == "torchvision_video" else "antialias"
    if frames < 1 or stride < 1:
        raise ValueError(f"--frames and --stride must be >= 1, got {frames} and {stride}")
    if len(jitter) != 2 or not crop <= jitter[0] <= jitter[1]:
        raise ValueError(f"--jitter must be LO HI with img-size {crop} <= LO <= HI, got {jitter}")
    if not 0 <= hflip <= 1:
        raise ValueError(f"--hflip must be a probability in [0, 1], got {hflip}")
    return ClipSettings(frames=int(frames), stride=int(stride), crop=int(crop), jitter=(int(jitter[0]), int(jitter[1])),
                        hflip=float(hflip), clips=clips, crops=crops,
                        eval_short=int(eval_short) if eval_short is not None else None, resize=resize)


def load_clip(source: str, meta: dict[str, Any], *, frames: int, crop: int) -> tuple[Tensor, Tensor, str]:
    """One clip of a video, preprocessed as a one-view evaluation: the centred clip of ``frames`` frames (at the
    saved model's stride, else the data's default), short side scaled as the evaluation does, centre crop.

    Args:
        source: a video file, or ``moving_digits:N`` (the N-th training video of the built-in set, rendered in
            memory by :func:`~visattn.tasks.video.builtin.moving_digits_sample`).
        meta: a saved model's metadata (its stride, jitter, mean and std); ``{}`` for the data's defaults.
        frames: frames per clip T.
        crop: the crop side S.

    Returns:
        the frames (T, 3, S, S) uint8 (for pictures), the model input (1, 3, T, S, S) normalised, and a line naming
        the clip's source frames.
    """
    from .builtin import moving_digits_sample

    builtin = source.startswith("moving_digits:")
    clip = _clip_settings(meta, VideoOptions(frames=frames, views="1x1"), builtin, crop)
    if builtin:
        try:
            index = int(source.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"moving_digits:N needs an integer N, got {source!r}") from None
        video, label = moving_digits_sample(index)                     # (N, S0, S0, 3) uint8
        num_frames = len(video)
        start = eval_clip_starts(num_frames, clip.frames, clip.stride, 1)[0]
        indices = frame_indices(start, clip.frames, clip.stride, num_frames)
        picked = video[indices]                                        # (T, S0, S0, 3)
        what = f"built-in moving digits video {index} (class {label})"
    else:
        info = probe_video(source)
        start = eval_clip_starts(info.num_frames, clip.frames, clip.stride, 1)[0]
        indices = frame_indices(start, clip.frames, clip.stride, info.num_frames)
        picked, info, _ = read_frames(source, indices, info=info)      # (T, H, W, 3)
        what = source
    video = torch.from_numpy(picked).permute(0, 3, 1, 2)               # (T, 3, H, W)
    views = clip.eval_views(video)                                     # (1, 3, T, S, S)
    mean, std = (_BUILTIN_DEFAULTS if builtin else _FOLDER_DEFAULTS)[4:]
    mean, std = tuple(meta.get("mean") or mean), tuple(meta.get("std") or std)
    line = f"{what}: frames {indices[0]}-{indices[-1]} at stride {clip.stride}"
    return views[0].transpose(0, 1), _normalize(views, mean, std), line  # (T, 3, S, S), (1, 3, T, S, S)


class VideoTask(Task):
    """Video classification with label-smoothed cross entropy (see the package docstring).

    Args:
        data: the datasets from :func:`load_video_data`.
        clip: clip sampling settings.
        options: the task's options.
        mean: normalisation mean per channel.
        std: normalisation std per channel.
    """

    model_task = "classification"
    input_ndim = 5
    main_metric = "val_top1"
    #: top1: training accuracy; replaced: % of items whose file was unreadable and that took another video
    train_stat_names = ("top1", "replaced")
    # PySlowFast trains MViT at lr 1e-4 per 16-clip batch per GPU; from scratch on small data 3e-4 starts learning
    # sooner here, while 1e-3 stays at chance for hundreds of steps
    defaults = {"model": "mvitv2_small_video", "data": "moving_digits", "batch_size": 16, "epochs": 10, "lr": 3e-4}

    def __init__(self, data: VideoData, clip: ClipSettings, options: VideoOptions, *, mean: tuple[float, ...],
                 std: tuple[float, ...]):
        self.data, self.clip, self.options = data, clip, options
        self.train_set, self.val_set, self.classes = data.train, data.val, data.classes
        self.img_size = clip.crop
        self.mean, self.std = tuple(mean), tuple(std)
        self.eval_label = data.source.get("source", "")
        self._replaced = 0

    @classmethod
    def for_training(cls, run: RunSettings, options: VideoOptions) -> VideoTask:
        from .builtin import BUILTIN_VIDEO_DATASETS

        builtin = run.data in BUILTIN_VIDEO_DATASETS and not Path(run.data).exists()
        clip = _clip_settings({}, options, builtin, run.img_size)
        data = load_video_data(run.data, clip, val_source=options.val_data, val_fraction=run.val_fraction,
                               train_limit=run.train_limit, val_limit=run.val_limit)
        mean, std = (_BUILTIN_DEFAULTS if builtin else _FOLDER_DEFAULTS)[4:]
        return cls(data, clip, options, mean=run.mean or mean, std=run.std or std)

    @classmethod
    def for_evaluation(cls, meta: dict[str, Any], options: VideoOptions, source: str | None = None, *,
                       limit: int | None = None, split: str = "val") -> VideoTask:
        """The saved model's validation split (or training split, evaluated with the same views), or all of a
        ``source`` given here: a list or a folder of class sub-folders is evaluated whole; a folder with
        ``train/`` + ``val/`` by its ``val/``."""
        if "weights" in meta and "data" not in meta:
            return cls._for_published_weights(meta, options, source, limit=limit, split=split)
        saved = meta.get("data", {})
        classes = meta.get("classes")
        builtin = bool(saved.get("builtin")) and source in (None, saved.get("source"))
        clip = _clip_settings(meta, options, builtin, None)
        mean, std = tuple(meta.get("mean") or KINETICS_MEAN), tuple(meta.get("std") or KINETICS_STD)
        if source and not builtin:
            path = Path(source)
            if not path.exists():
                raise ValueError(f"--data {source}: no such file or folder")
            if path.is_dir() and (path / "train").is_dir():
                data = load_video_data(source, clip, val_limit=limit, classes=classes, need_train=False)
            else:
                files, labels, found, skipped = _read_source(path, classes)
                if skipped:
                    log.warning("skipped %d missing or non-video file(s) in %s", skipped, source)
                files, labels = files[:limit] if limit else files, labels[:limit] if limit else labels
                data = VideoData(train=None, val=VideoDataset(files, labels, clip, train=False), classes=found,
                                 source={"source": source})
        else:
            source = source or saved.get("source")
            if not source:
                raise ValueError("the checkpoint does not record its data; pass --data")
            limits = {"val_limit": limit} if split == "val" else {"train_limit": limit}
            data = load_video_data(source, clip, val_source=saved.get("val_source") if not builtin else None,
                                   val_fraction=saved.get("val_fraction", 0.1), split_seed=saved.get("split_seed", 0),
                                   classes=classes, **limits)
            if split == "train":                                       # the training videos, evaluated with views
                data.train = VideoDataset(data.train.files, data.train.labels.tolist(), clip, train=False)
        if classes and list(classes) != list(data.classes):
            raise ValueError(f"the data's classes {data.classes[:5]}... differ from the model's {classes[:5]}...")
        task = cls(data, clip, options, mean=mean, std=std)
        task.eval_label = f"{source} {split} split" if split == "train" or data.train is not None else source
        return task

    @classmethod
    def _for_published_weights(cls, meta: dict[str, Any], options: VideoOptions, source: str | None, *,
                               limit: int | None, split: str) -> VideoTask:
        """Evaluation of published weights (``meta`` from :func:`visattn.checkpoint.load_published_model`) on all of
        a folder of class sub-folders (or of its ``val/`` / ``train/`` sub-folder) or a list, with the publisher's
        clip sampling and preprocessing; class folders and list labels are mapped onto the weights' label names
        (:func:`~visattn.tasks.video.data.map_class_names`: ``air_drumming`` is Kinetics' ``air drumming``)."""
        what = ("a folder of class sub-folders named by the label names (abseiling/, air_drumming/ ...) or a 'path "
                "label' list")
        if not source:
            raise DataError(f"evaluating the published weights {meta['weights']} needs --data: {what}")
        if not meta.get("classes"):
            raise DataError(f"the published weights {meta['weights']} come without label names: their classes "
                            "cannot be matched to the data's")
        path = Path(source)
        if not path.exists():
            raise DataError(f"--data {source}: no such file or folder ({what})")
        names = ("train",) if split == "train" else _VAL_NAMES
        if path.is_dir():
            path = next((path / n for n in names if (path / n).is_dir()), path)
        classes = list(meta["classes"])
        files, labels, found, skipped = read_source_for_classes(path, classes)
        if skipped:
            log.warning("skipped %d missing or non-video file(s) in %s", skipped, path)
        if limit:
            files, labels = files[:limit], labels[:limit]
        clip = _clip_settings(meta, options, False, None)
        data = VideoData(train=None, val=VideoDataset(files, labels, clip, train=False), classes=classes,
                         source={"source": source})
        task = cls(data, clip, options, mean=tuple(meta.get("mean") or KINETICS_MEAN),
                   std=tuple(meta.get("std") or KINETICS_STD))
        kind = "class folder(s)" if path.is_dir() else "label(s) of the list"
        task.eval_label = f"{path}, {len(found)} {kind} of {len(classes)} classes, {meta['weights']} preprocessing"
        return task

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # --- training hooks -----------------------------------------------------------------------------------------
    def model_overrides(self) -> dict[str, Any]:
        # the video models size their position tables for (T, H, W)
        return {"num_classes": self.num_classes, "img_size": (self.clip.frames, self.clip.crop, self.clip.crop)}

    def model_meta(self) -> dict[str, Any]:
        c = self.clip
        return {"classes": self.classes, "img_size": c.crop, "frames": c.frames, "stride": c.stride,
                "jitter": list(c.jitter), "hflip": c.hflip, "views": f"{c.clips}x{c.crops}", "mean": list(self.mean),
                "std": list(self.std), "data": self.data.source}

    def describe(self) -> str:
        c = self.clip
        return (f"{len(self.train_set)} train / {len(self.val_set)} val videos, clips of {c.frames} frames at stride "
                f"{c.stride}, {c.crop}px, {c.clips}x{c.crops} eval views")

    def start_epoch(self, epoch: int, seed: int) -> None:
        self.train_set.epoch_seed = _mix(seed, epoch)

    def collate(self, items: list[tuple[Tensor, int, tuple[str, ...]]]) -> tuple[Tensor, Tensor, list[str]]:
        return collate_train(items)

    def augment(self, batch: tuple[Tensor, Tensor, list[str]], generator: torch.Generator, global_batch: int,
                offset: int) -> tuple[Tensor, Tensor]:
        """Normalise the clips (their random clip, scale, crop and flip were drawn in the workers)."""
        clips, targets, replaced = batch
        self._replaced = len(replaced)
        return _normalize(clips, self.mean, self.std), targets

    @staticmethod
    def run_model(model: nn.Module, clips: Tensor) -> Tensor:
        """Logits of (N, 3, T, H, W) clips."""
        return model(clips)

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        return self.run_model(model, inputs)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.options.label_smoothing)

    def train_stats(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        return {"top1": 100.0 * float((logits.argmax(-1) == targets).sum()), "replaced": 100.0 * self._replaced}

    def prepare_views(self, views: Tensor, keys: list[int]) -> Tensor:
        """Normalised views, their frames shuffled (seeded by ``keys``) under ``--shuffle-frames``."""
        if self.options.shuffle_frames:
            views = shuffle_clip_frames(views, self.options.shuffle_seed, keys)
        return _normalize(views, self.mean, self.std)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: EvalContext) -> dict[str, Any]:
        """Video-level (softmax averaged over the K x S views) and clip-level (every view alone) top-1 / top-5 (%),
        the video-level loss and confusion matrix; unreadable videos are left out and counted (``val_skipped``)."""
        ds = self.val_set if ctx.dataset is None else ctx.dataset
        V = self.clip.clips * self.clip.crops                           # views per video, for the loader's batch
        dist_info = ctx.dist_info or DistInfo()
        shard = list(range(dist_info.rank, len(ds), dist_info.world_size))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, shard), batch_size=max(1, ctx.batch_size // V),
                                             num_workers=ctx.workers, shuffle=False, collate_fn=collate_eval)
        was_training = model.training
        model.eval()
        n = self.num_classes
        confusion = torch.zeros(n * n, dtype=torch.float64)
        # loss sum, video top-1, video top-5, clip top-1, clip top-5, videos, skipped
        totals = torch.zeros(7, dtype=torch.float64)
        for items in loader:
            good = [it for it in items if it[4] is None]
            totals[6] += len(items) - len(good)
            if not good:
                continue
            V = good[0][0].shape[0]                                     # the dataset's own K x S
            views = torch.cat([it[0] for it in good])                   # (n*V, 3, T, S, S) uint8
            keys = [it[2] * V + v for it in good for v in range(V)]
            x = self.prepare_views(views, keys)
            logits = []
            for chunk in x.split(max(1, ctx.batch_size)):
                with ctx.amp():
                    logits.append(self.run_model(model, chunk.to(ctx.device)).float().cpu())
            logits = torch.cat(logits)                                  # (n*V, classes)
            targets = torch.tensor([it[1] for it in good])
            probs = logits.softmax(-1).view(len(good), V, n).mean(1)    # (videos, V, classes) -> (videos, classes)
            log_probs = probs.clamp_min(1e-12).log()
            totals[0] += float(F.nll_loss(log_probs, targets, reduction="sum"))
            totals[1:3] += torch.tensor(topk_correct(log_probs, targets, (1, 5)), dtype=torch.float64)
            totals[3:5] += torch.tensor(topk_correct(logits, targets.repeat_interleave(V), (1, 5)),
                                        dtype=torch.float64) / V
            totals[5] += len(good)
            confusion += torch.bincount(targets * n + probs.argmax(-1), minlength=n * n).double()
        model.train(was_training)
        totals = all_reduce_sum(totals, dist_info)
        confusion = all_reduce_sum(confusion, dist_info).view(n, n).long()   # (truth, prediction)
        count = max(1.0, float(totals[5]))
        return {"val_loss": float(totals[0]) / count, "val_top1": 100 * float(totals[1]) / count,
                "val_top5": 100 * float(totals[2]) / count, "val_clip_top1": 100 * float(totals[3]) / count,
                "val_clip_top5": 100 * float(totals[4]) / count, "val_count": int(totals[5]),
                "val_skipped": int(totals[6]), "confusion": confusion}

    def epoch_summary(self, row: dict[str, Any]) -> str:
        ema = f"  ema {row['ema_val_top1']:.2f}" if "ema_val_top1" in row else ""
        replaced = f"  replaced {row['train_replaced']:.1f}%" if row.get("train_replaced") else ""
        skipped = f"  val_skipped {row['val_skipped']}" if row.get("val_skipped") else ""
        return (f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  val_top1 {row['val_top1']:.2f}"
                f"{ema}  val_top5 {row['val_top5']:.2f}  clip_top1 {row['val_clip_top1']:.2f}{replaced}{skipped}")

    def write_plots(self, run: Path, rows: list[dict[str, Any]], result: dict[str, Any], title: str) -> list[str]:
        from ...plots import plot_confusion

        written = super().write_plots(run, rows, result, title)
        if "confusion" in result and plot_confusion(result["confusion"].tolist(), self.classes, run / "confusion.png",
                                                    title=f"{title}: validation top-1 {result['val_top1']:.2f}%"):
            written.append("confusion.png")
        return written

    # --- saved models -------------------------------------------------------------------------------------------
    def eval_report(self, result: dict[str, Any], out: Path, title: str) -> str:
        from ...plots import plot_confusion

        png = plot_confusion(result["confusion"].tolist(), self.classes, out / "confusion.png",
                             title=f"{title}: top-1 {result['val_top1']:.2f}%")
        c, o = self.clip, self.options
        shuffled = f", frames shuffled (seed {o.shuffle_seed})" if o.shuffle_frames else ""
        line = (f"video top-1 {result['val_top1']:.2f}%  top-5 {result['val_top5']:.2f}%  clip top-1 "
                f"{result['val_clip_top1']:.2f}%  top-5 {result['val_clip_top5']:.2f}%  loss {result['val_loss']:.4f}  "
                f"({result['val_count']} videos x {c.clips}x{c.crops} views of {c.frames}x{c.stride}{shuffled}, "
                f"{self.eval_label})")
        if result.get("val_skipped"):
            line += f"\nskipped {result['val_skipped']} unreadable video(s) (named in the log above)"
        return line + (f"\nwrote {png}" if png else "")

    @classmethod
    def predict(cls, model: nn.Module, meta: dict[str, Any], options: VideoOptions, request: PredictRequest) -> int:
        """Top-k classes of each video file (softmax averaged over the K x S views) and the clips' start and end
        times."""
        if not request.inputs:
            raise ValueError("no VIDEO given")
        clip = _clip_settings(meta, options, False, None)
        mean, std = tuple(meta.get("mean") or KINETICS_MEAN), tuple(meta.get("std") or KINETICS_STD)
        classes = class_names(meta, model.config.num_classes)
        model.eval()
        results, skipped = [], 0
        for path in request.inputs:
            try:
                info = probe_video(path)
                starts = eval_clip_starts(info.num_frames, clip.frames, clip.stride, clip.clips)
                indices = [j for s in starts for j in frame_indices(s, clip.frames, clip.stride, info.num_frames)]
                frames, info, _ = read_frames(path, indices, info=info)   # (K*T, H, W, 3)
            except VideoError as err:  # missing, corrupt or not a video: skip it and say which
                log.warning("skipping %s: %s", path, err)
                skipped += 1
                continue
            video = torch.from_numpy(frames).permute(0, 3, 1, 2)        # (K*T, 3, H, W)
            clips = video.view(clip.clips, clip.frames, *video.shape[1:])  # (K, T, 3, H, W)
            views = torch.cat([clip.eval_views(c) for c in clips])      # (K*S, 3, T, S, S)
            if options.shuffle_frames:
                views = shuffle_clip_frames(views, options.shuffle_seed, list(range(len(views))))
            with torch.no_grad():
                logits = cls.run_model(model, _normalize(views, mean, std).to(request.device)).float().cpu()
            probs = logits.softmax(-1).mean(0)
            preds = top_classes(probs, classes, request.topk)
            ends = [min(s + (clip.frames - 1) * clip.stride, info.num_frames - 1) for s in starts]
            times = [[round(s / info.fps, 3), round(e / info.fps, 3)] for s, e in zip(starts, ends)]
            results.append({"video": path, "top": preds, "clips_s": times, "views": f"{clip.clips}x{clip.crops}"})
            if not request.json:
                spans = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in times)
                print(f"{path}: {format_top(preds)}  [{clip.clips}x{clip.crops} views; clips at {spans} s]")
        return finish_predictions(results, skipped, request, "video")


class FrameAverageTask(VideoTask):
    """The order-blind baseline: an image classifier scores every frame of a clip; the clip's logits are the mean
    over its frames. Same data, sampling, views and metrics as ``video``; frame order cannot matter."""

    input_ndim = 4
    defaults = {"model": "mvitv2_tiny", "data": "moving_digits", "batch_size": 16, "epochs": 10, "lr": 3e-4}

    def model_overrides(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    @staticmethod
    def run_model(model: nn.Module, clips: Tensor) -> Tensor:
        B, C, T, H, W = clips.shape
        frames = clips.transpose(1, 2).reshape(B * T, C, H, W)         # (B*T, C, H, W)
        return model(frames).view(B, T, -1).mean(1)                    # (B, T, classes) -> (B, classes)
