"""Video datasets: where the files are (a folder of class sub-folders, a ``path label`` list, the built-in set) and
how an item is decoded (in DataLoader workers).

Data sources (``--data``, and ``--val-data`` for a separate validation source):

* ``moving_digits``, the built-in set (``builtin.py``), generated once into the cache;
* a folder of class sub-folders holding video files (UCF-101 / HMDB layout). With ``train/`` and ``val/`` (or
  ``validation/`` / ``test/``) sub-folders those are the splits; otherwise a stratified ``--val-fraction`` of every
  class is held out with a fixed seed;
* a list file (Kinetics / PySlowFast ``train.csv``): one ``path label`` per line, separated by a space, comma or
  tab, paths relative to the list's folder, labels integers or class names. Integer labels are named by a
  ``classes.txt`` beside the list (one name per line) when there is one. A ``val`` / ``validation`` / ``test`` list
  (.csv, .txt or .list) beside a list named ``train.*`` is its validation split.

Unreadable files. A listed file that does not exist, or a file in a class folder with a non-video extension, is
skipped when the source is scanned, with its name in the log. A file that exists but cannot be decoded is found
when it is read: a training item then takes the next readable video of the dataset instead (the batch keeps its
size) and an evaluation item is left out of the metrics; either way the file is named in the log and counted
(``train_replaced``, the percentage of items replaced, and ``val_skipped``). Nothing is decoded at scan time, so
a list of 240,000 Kinetics videos starts at once.

Randomness. A training item's clip (start frame, scale, crop, flip) is drawn from a generator seeded by (run seed,
epoch, item index): the same clips whatever the number of DataLoader workers or processes, and on ``--resume``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..base import DataError
from .io import VIDEO_EXTENSIONS, VideoError, VideoInfo, probe_video, read_frames
from .sampling import (
    eval_clip_starts,
    frame_indices,
    random_spatial,
    spatial_views,
    train_clip_start,
)

__all__ = ["ClipSettings", "VideoData", "VideoDataset", "load_video_data", "map_class_names", "read_source_for_classes",
           "read_video_list", "scan_video_folder"]

log = logging.getLogger("visattn")

_LIST_SUFFIXES = (".csv", ".txt", ".list")
_VAL_NAMES = ("val", "validation", "test")


@dataclass(frozen=True)
class ClipSettings:
    """How a clip is made from a video: T frames at stride tau, crop side, training jitter and flip, eval views."""

    frames: int
    stride: int
    crop: int
    jitter: tuple[int, int]
    hflip: float
    clips: int = 1          # evaluation: temporal clips K
    crops: int = 1          # evaluation: spatial crops S
    eval_short: int | None = None   # evaluation, S = 1: the scaled short side (None: jitter[0], as PySlowFast)
    resize: str = "antialias"       # evaluation resize arithmetic, one of sampling.RESIZE_MODES

    def eval_views(self, clip: Tensor) -> Tensor:
        """The S spatial evaluation views of one clip: S = 1, the centre crop of the short side scaled to
        ``eval_short``; S = 3, three crops along the long side of the short side scaled to the crop (PySlowFast's
        ``uniform_crop``).

        Shape: (T, 3, H, W) uint8 -> (S, 3, T, crop, crop) uint8.
        """
        short = (self.eval_short or self.jitter[0]) if self.crops == 1 else self.crop
        return spatial_views(clip, self.crop, self.crops, short, resize=self.resize)


def _mix(*values: int) -> int:
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


class VideoDataset(torch.utils.data.Dataset):
    """Video files decoded on access (in DataLoader workers).

    A training item is ``(clip, label, skipped)``: one random clip (3, T, crop, crop) uint8 and the names of files
    that failed before a readable one was found. An evaluation item is ``(views, label, index, starts, skipped)``:
    the (K * S, 3, T, crop, crop) uint8 views (temporal clip major), the item's index, each clip's start time in
    seconds, and the file's name if it could not be read (then ``views`` is empty).

    Args:
        files: video paths.
        labels: class indices.
        clip: the sampling settings.
        train: training items (one random clip) or evaluation items (all views).
    """

    #: how many other videos a training item tries before giving up (a dataset of broken files fails clearly)
    max_retries = 10

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], clip: ClipSettings, *, train: bool):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = [str(f) for f in files]
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.clip, self.train = clip, train
        self.epoch_seed = 0             # set per epoch by the task (VideoTask.start_epoch) before workers start

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, i: int, starts: Sequence[int], info: VideoInfo) -> tuple[Tensor, list[float]]:
        """(len(starts) * T, 3, H, W) uint8 frames of clips starting at ``starts``, and the starts in seconds."""
        c = self.clip
        indices = [j for s in starts for j in frame_indices(s, c.frames, c.stride, info.num_frames)]
        frames, info, _ = read_frames(self.files[i], indices, info=info)  # (K*T, H, W, 3)
        return torch.from_numpy(frames).permute(0, 3, 1, 2), [s / info.fps for s in starts]  # (K*T, 3, H, W)

    def _train_item(self, i: int) -> tuple[Tensor, int, tuple[str, ...]]:
        c = self.clip
        skipped: list[str] = []
        for attempt in range(self.max_retries + 1):
            j = (i + attempt) % len(self)
            g = torch.Generator().manual_seed(_mix(self.epoch_seed, j))
            try:
                info = probe_video(self.files[j])
                start = train_clip_start(info.num_frames, c.frames, c.stride, g)
                video, _ = self._decode(j, [start], info)                # (T, 3, H, W)
            except VideoError as err:
                log.warning("skipping unreadable video %s: %s", self.files[j], err)
                skipped.append(self.files[j])
                continue
            return random_spatial(video, c.crop, c.jitter, c.hflip, g), int(self.labels[j]), tuple(skipped)
        raise DataError(f"{self.max_retries + 1} videos in a row could not be read, from {self.files[i]}; check the "
                        "data (the log names each file)")

    def _eval_item(self, i: int) -> tuple[Tensor, int, int, list[float], str | None]:
        c = self.clip
        try:
            info = probe_video(self.files[i])
            starts = eval_clip_starts(info.num_frames, c.frames, c.stride, c.clips)
            video, times = self._decode(i, starts, info)                # (K*T, 3, H, W)
        except VideoError as err:
            log.warning("skipping unreadable video %s: %s", self.files[i], err)
            return torch.zeros(0, 3, c.frames, c.crop, c.crop, dtype=torch.uint8), int(self.labels[i]), i, [], \
                self.files[i]
        clips = video.view(c.clips, c.frames, *video.shape[1:])         # (K, T, 3, H, W)
        views = torch.cat([c.eval_views(clip) for clip in clips])       # (K*S, 3, T, crop, crop)
        return views, int(self.labels[i]), i, times, None

    def __getitem__(self, i: int) -> Any:
        return self._train_item(i) if self.train else self._eval_item(i)


def collate_train(items: list[tuple[Tensor, int, tuple[str, ...]]]) -> tuple[Tensor, Tensor, list[str]]:
    clips = torch.stack([it[0] for it in items])                        # (B, 3, T, S, S) uint8
    return clips, torch.tensor([it[1] for it in items], dtype=torch.long), [f for it in items for f in it[2]]


def collate_eval(items: list[tuple]) -> list[tuple]:
    """Evaluation items stay a list (a batch may hold unreadable videos with no views)."""
    return items


@dataclass
class VideoData:
    train: VideoDataset | None
    val: VideoDataset
    classes: list[str]
    source: dict[str, Any]       # how to rebuild the same split later (recorded in model.json)
    builtin: bool = False


# --- sources -----------------------------------------------------------------------------------------------------

def scan_video_folder(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str], int]:
    """Video files and labels of a class-per-sub-folder directory (files with another extension are skipped with
    a warning naming each).

    Returns:
        files, labels, class names (sorted sub-folder names, or ``classes`` if given), number skipped.
    """
    if not root.is_dir():
        raise DataError(f"video folder not found: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root} has no class sub-folders: expected {root}/<class>/<video>.mp4")
    found = classes if classes is not None else []
    files, labels, skipped = [], [], 0
    for sub in subdirs:
        good = []
        for path in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                log.warning("skipping %s: not a video file extension (%s)", path, ", ".join(VIDEO_EXTENSIONS))
                skipped += 1
                continue
            good.append(str(path))
        if not good:
            log.warning("class folder %s has no video files; ignoring it", sub)
            continue
        if classes is None:
            found.append(sub.name)
        elif sub.name not in classes:
            raise DataError(f"class folder {sub} is not among the training classes {classes}")
        files += good
        labels += [found.index(sub.name)] * len(good)
    if not files:
        raise DataError(f"no video files in {root}: expected {root}/<class>/*{'|'.join(VIDEO_EXTENSIONS)}")
    return files, labels, list(found), skipped


def read_video_list(path: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str], int]:
    """Files and labels of a ``path label`` list (see the module docstring); missing files are skipped and named.

    Returns:
        files, labels, class names, number skipped.
    """
    if not path.is_file():
        raise DataError(f"video list not found: {path}")
    rows: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = re.split(r"[,\t ]+", line)
        if len(parts) < 2:
            raise DataError(f"{path}:{n}: expected 'path label', got {line!r}")
        if n == 1 and parts[-1].lower() in ("label", "class", "label_id"):   # a CSV header
            continue
        rows.append((" ".join(parts[:-1]), parts[-1]))
    if not rows:
        raise DataError(f"{path} lists no videos: expected one 'path label' per line")
    numeric = all(re.fullmatch(r"\d+", label) for _, label in rows)
    if classes is None:
        names_file = path.parent / "classes.txt"
        if numeric:
            top = max(int(label) for _, label in rows)
            if names_file.is_file():
                classes = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
                if len(classes) <= top:
                    raise DataError(f"{names_file} names {len(classes)} classes but {path} uses label {top}")
            else:
                classes = [str(k) for k in range(top + 1)]
        else:
            classes = sorted({label for _, label in rows})
    files, labels, skipped = [], [], 0
    for name, label in rows:
        file = Path(name) if os.path.isabs(name) else path.parent / name
        if not file.is_file():
            log.warning("skipping %s (listed in %s): no such file", file, path)
            skipped += 1
            continue
        if numeric:
            k = int(label)
            if k >= len(classes):
                raise DataError(f"{path}: label {k} of {name} is beyond the {len(classes)} classes")
        elif label in classes:
            k = classes.index(label)
        else:
            raise DataError(f"{path}: class {label!r} of {name} is not among {classes[:8]}...")
        files.append(str(file))
        labels.append(k)
    if not files:
        raise DataError(f"none of the {len(rows)} videos listed in {path} exists")
    return files, labels, classes, skipped


def _read_source(path: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str], int]:
    if path.is_file():
        return read_video_list(path, classes)
    return scan_video_folder(path, classes)


def _name_key(name: str) -> str:
    # Kinetics folders and CSVs often spell "air drumming" as "air_drumming": '_' and runs of spaces are one space,
    # and case is ignored
    return " ".join(name.replace("_", " ").split()).lower()


def map_class_names(names: Sequence[str], classes: Sequence[str]) -> list[int]:
    """The model's class index of each of a data source's class names (folder names, list labels): the same name,
    else the same after '_' -> ' ' and case folding (``air_drumming`` is ``air drumming``); a spelling two classes
    share matches only exactly.

    Raises:
        DataError: naming the names that match no class (the first ten), with the closest class names.
    """
    import difflib

    loose: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        loose.setdefault(_name_key(name), []).append(i)
    lookup = {key: idx[0] for key, idx in loose.items() if len(idx) == 1}
    exact = {name: i for i, name in enumerate(classes)}
    out, unknown = [], []
    for name in names:
        index = exact.get(name, lookup.get(_name_key(name)))
        if index is None:
            unknown.append(name)
        out.append(-1 if index is None else index)
    if unknown:
        spaced = next((c for c in classes if " " in c), classes[-1])
        hints = []
        for name in unknown[:3]:
            close = difflib.get_close_matches(_name_key(name), list(lookup), n=2, cutoff=0.6)
            if close:
                hints.append(f"{name!r}: did you mean {' or '.join(repr(classes[lookup[c]]) for c in close)}?")
        raise DataError(f"{len(unknown)} class name(s) of the data match none of the model's {len(classes)} classes: "
                        f"{', '.join(repr(n) for n in unknown[:10])}{' ...' if len(unknown) > 10 else ''}. Name each "
                        f"class folder (or list label) by a class name, spaces or underscores alike, e.g. "
                        f"{classes[0]!r} or {spaced.replace(' ', '_')!r}" + (f" ({'; '.join(hints)})" if hints else ""))
    return out


def read_source_for_classes(path: Path, classes: Sequence[str]) -> tuple[list[str], list[int], list[str], int]:
    """Files and labels of a folder or list whose class names are mapped onto a fixed class list (published
    weights): folder names and list labels by :func:`map_class_names`; integer list labels without a
    ``classes.txt`` beside the list are the classes' indices themselves.

    Returns:
        files, labels (indices into ``classes``), the source's own class names, number skipped.
    """
    files, labels, names, skipped = _read_source(path)
    indices = path.is_file() and not (path.parent / "classes.txt").is_file() and \
        names == [str(k) for k in range(len(names))]                   # read_video_list's names of integer labels
    if indices:
        if len(names) > len(classes):
            raise DataError(f"{path}: label {len(names) - 1} is beyond the model's {len(classes)} classes")
        index = list(range(len(names)))
    else:
        index = map_class_names(names, classes)
    return files, [index[k] for k in labels], names, skipped


def _sibling_val_list(path: Path) -> Path | None:
    if not path.stem.lower().startswith("train"):
        return None
    for name in _VAL_NAMES:
        for suffix in _LIST_SUFFIXES:
            candidate = path.with_name(name + suffix)
            if candidate.is_file():
                return candidate
    return None


def load_video_data(source: str, clip: ClipSettings, *, val_source: str | None = None, val_fraction: float = 0.1,
                    split_seed: int = 0, train_limit: int | None = None, val_limit: int | None = None,
                    classes: list[str] | None = None, need_train: bool = True) -> VideoData:
    """Training and validation datasets of a built-in name, a folder or a list (see the module docstring).

    Args:
        source: ``moving_digits``, a folder or a list file.
        clip: clip sampling settings.
        val_source: a separate validation folder or list.
        val_fraction: held-out fraction per class when the source has no validation split.
        split_seed: seed of that split.
        train_limit: keep only N training videos (a fixed random subset).
        val_limit: same for validation.
        classes: the class names the labels must follow (evaluation of a saved model).
        need_train: build the training split (False: evaluation only; the validation split is still the same).
    """
    from ..classification.data import _stratified_split
    from .builtin import BUILTIN_VIDEO_DATASETS, builtin_video_root

    record: dict[str, Any] = {"source": source, "val_fraction": val_fraction, "split_seed": split_seed}
    builtin = source in BUILTIN_VIDEO_DATASETS and not Path(source).exists()
    path = builtin_video_root(source) if builtin else Path(source)
    if not builtin and not path.exists():
        raise DataError(f"video data not found: {source} (a folder of class sub-folders, a 'path label' list, or "
                        f"built-in: {', '.join(BUILTIN_VIDEO_DATASETS)})")
    skipped = 0
    split_dirs = [path / n for n in _VAL_NAMES if (path / n).is_dir()] if path.is_dir() else []
    val_path = Path(val_source) if val_source else None
    if path.is_dir() and (path / "train").is_dir() and split_dirs:
        path, val_path = path / "train", val_path or split_dirs[0]
    elif val_path is None and path.is_file():
        val_path = _sibling_val_list(path)
    if val_path is not None:
        files, labels, found, n = _read_source(path, classes)
        val_files, val_labels, _, m = _read_source(val_path, found)
        skipped += n + m
        record["val_source"] = str(val_path) if not builtin else "val/"
        train = (files, labels)
        val = (val_files, val_labels)
    else:
        files, labels, found, skipped = _read_source(path, classes)
        train_idx, val_idx = _stratified_split(torch.tensor(labels), val_fraction, split_seed)
        if len(val_idx) == 0:
            raise DataError(f"{path} has too few videos per class to hold out a validation split; add videos or "
                            "give --val-data")
        train = ([files[i] for i in train_idx], [labels[i] for i in train_idx])
        val = ([files[i] for i in val_idx], [labels[i] for i in val_idx])
    if skipped:
        log.warning("skipped %d missing or non-video file(s) in %s", skipped, source)
    record["skipped_files"] = skipped
    if builtin:
        record = {"source": source, "builtin": True}
    train = _limit(*train, train_limit, seed=1)
    val = _limit(*val, val_limit, seed=2)
    if not train[0] or not val[0]:
        raise DataError(f"{source}: empty {'training' if not train[0] else 'validation'} split")
    train_set = VideoDataset(*train, clip, train=True) if need_train else None
    return VideoData(train=train_set, val=VideoDataset(*val, clip, train=False), classes=found, source=record,
                     builtin=builtin)


def _limit(files: list[str], labels: list[int], n: int | None, seed: int) -> tuple[list[str], list[int]]:
    if n is None or n >= len(files):
        return files, labels
    keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    return [files[i] for i in keep], [labels[i] for i in keep]
