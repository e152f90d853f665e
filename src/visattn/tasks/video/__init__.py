"""Video classification (``--task video``): decoding with PyAV in DataLoader workers, one random clip per video in
training, K temporal clips x S spatial crops averaged in evaluation; clip- and video-level top-1 / top-5.

``--task video_frames`` trains an *image* model on the same clips, each frame classified alone and the logits
averaged over the frames: a baseline blind to frame order. Decoding in ``io.py``, clip indices in ``sampling.py``,
datasets in ``data.py``, the built-in moving-digits videos in ``builtin.py``, the tasks in ``task.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import register_task


@dataclass(frozen=True)
class VideoOptions:
    """Clip sampling, views and augmentation (None: the data source's default, e.g. 16 x 4 and 224 px for folders
    and lists, 8 x 2 and 32 px for the built-in moving digits)."""

    frames: int | None = field(default=None, metadata={"help": "frames per clip T (default 16; built-in 8)"})
    stride: int | None = field(default=None, metadata={"help": "temporal stride tau between clip frames (default 4; "
                                                               "built-in 2)"})
    views: str | None = field(default=None, metadata={
        "metavar": "KxS", "help": "evaluation views: K temporal clips x S spatial crops, softmax averaged (default "
                                  "5x1; S is 1 or 3)"})
    jitter: tuple[int, ...] | None = field(default=None, metadata={
        "nargs": 2, "metavar": ("LO", "HI"), "help": "training short-side scale range in pixels (default 256 320 "
                                                      "for a 224 crop, scaled with --img-size)"})
    hflip: float | None = field(default=None, metadata={"help": "training horizontal flip probability (default 0.5; "
                                                                "0 for the built-in data, whose classes have a "
                                                                "direction)"})
    val_data: str | None = field(default=None, metadata={
        "help": "validation folder or list (default: train/ + val/ sub-folders, a val list beside the training "
                "list, or a held-out --val-fraction)"})
    shuffle_frames: bool = field(default=False, metadata={
        "help": "evaluate with each clip's frames in a seeded random order (the temporal test)"})
    shuffle_seed: int = field(default=0, metadata={"help": "seed of --shuffle-frames (default 0)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing (default 0.1)"})


register_task("video", "visattn.tasks.video.task:VideoTask", options=VideoOptions,
              help="video classification (built-in moving digits, a folder of class sub-folders, or a "
                   "'path label' list)")
register_task("video_frames", "visattn.tasks.video.task:FrameAverageTask", options=VideoOptions,
              help="video classification by an image model: per-frame logits averaged (order-blind baseline)")
