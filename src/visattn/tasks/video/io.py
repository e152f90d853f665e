"""Reading and writing video files with PyAV (FFmpeg): frames picked by index, reached by seeking to a timestamp.

A clip is a list of frame indices (``sampling.py``). :func:`read_frames` opens the file once, seeks to the keyframe
at or before the first index's timestamp and decodes forward only until the last index is reached, so a clip from
the end of a long video does not decode the whole video; indices more than ``seek_gap`` frames apart (the K clips
of a long video) are reached by one seek each. Each decoded frame's index is its presentation time
times the stream's average frame rate (rounded); an index asks for the first frame at or after it. Indices past the
last frame take the last frame (the short-video rule of ``sampling.py``).

Containers and codecs: whatever the FFmpeg inside the ``av`` wheel reads (mp4, avi, webm, mkv, mov...);
:func:`write_video` picks H.264 for ``.mp4`` / ``.mkv`` / ``.mov``, VP9 for ``.webm`` and MPEG-4 Part 2 for ``.avi``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["VIDEO_EXTENSIONS", "VideoError", "VideoInfo", "probe_video", "read_frames", "write_video"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
_ENCODERS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".m4v": "libx264", ".webm": "libvpx-vp9",
             ".avi": "mpeg4"}


class VideoError(ValueError):
    """A file that cannot be opened or decoded as a video (missing, corrupt, no video stream)."""


def _require_av():
    try:
        import av
    except ImportError as err:  # the optional extra
        raise ImportError("reading video needs PyAV: pip install 'visattn[video]'") from err
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What clip sampling needs to know about a file: frame count, rate, duration and frame size."""

    num_frames: int
    fps: float
    duration: float       # seconds
    width: int
    height: int


def _open(path: str | Path):
    av = _require_av()
    try:
        container = av.open(str(path))
    except Exception as err:  # FFmpeg raises InvalidDataError, FileNotFoundError, PermissionError...
        raise VideoError(f"{path}: cannot open ({type(err).__name__}: {err})") from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container, container.streams.video[0]


def _stream_info(container, stream, path: str | Path) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError(f"{path}: the video stream has no frame rate")
    fps = float(rate)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000                      # container.duration is in microseconds
    else:
        duration = 0.0
    frames = stream.frames or round(duration * fps)
    if frames <= 0:
        raise VideoError(f"{path}: the video stream reports no frames and no duration")
    return VideoInfo(num_frames=int(frames), fps=fps, duration=duration or frames / fps,
                     width=stream.codec_context.width, height=stream.codec_context.height)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, rate, duration and size of a video file (headers only; nothing is decoded).

    Raises:
        VideoError: the file cannot be opened or has no usable video stream.
    """
    container, stream = _open(path)
    try:
        return _stream_info(container, stream, path)
    finally:
        container.close()


def read_frames(path: str | Path, indices: Sequence[int], *, info: VideoInfo | None = None,
                seek_gap: int = 64) -> tuple[np.ndarray, VideoInfo, int]:
    """Decode the frames at ``indices`` (any order, repeats allowed) of a video file.

    Args:
        path: the file.
        indices: 0-based frame indices; those past the last frame give the last frame.
        info: the file's :class:`VideoInfo` if already known.
        seek_gap: wanted frames further apart than this are reached by a new seek rather than by decoding the
            frames between them (K evaluation clips of a long video).

    Returns:
        frames (len(indices), H, W, 3) uint8 RGB, the file's info, and the number of frames decoded (the cost).

    Raises:
        VideoError: the file cannot be opened or no frame could be decoded.
    """
    if len(indices) == 0:
        raise ValueError("read_frames needs at least one frame index")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    container, stream = _open(path)
    try:
        info = info or _stream_info(container, stream, path)
        needed = sorted(set(int(i) for i in indices))
        # runs of indices closer than seek_gap frames are decoded in one pass; a longer gap is a new seek
        runs = [[needed[0]]]
        for i in needed[1:]:
            if i - runs[-1][-1] > seek_gap:
                runs.append([])
            runs[-1].append(i)
        got: dict[int, np.ndarray] = {}
        decoded = 0
        try:
            for run in runs:
                frames, n = _decode(container, stream, run, info.fps, seek=True)
                got.update(frames)
                decoded += n
        except VideoError:
            raise
        except Exception as err:  # a corrupt packet, a truncated file: FFmpeg errors of many types
            raise VideoError(f"{path}: decoding failed ({type(err).__name__}: {err})") from err
        if not got:
            raise VideoError(f"{path}: no frame could be decoded")
    finally:
        container.close()
    for i in needed:                                                   # a run wholly past the end of the stream
        if i not in got:
            got[i] = got[max((k for k in got if k < i), default=min(got))]
    frames = np.stack([got[i] for i in indices])                       # (len(indices), H, W, 3)
    return frames, info, decoded


def _rgb(frame) -> np.ndarray:
    # One swscale thread: the scaler thread pool of PyAV >= 17 does not survive fork(), and a DataLoader worker
    # forked after the main process converted a frame (visattn predict, a test) would wait forever on it. Older
    # PyAV converts on the calling thread and has no ``threads`` argument.
    try:
        return frame.to_ndarray(format="rgb24", threads=1)
    except TypeError:
        return frame.to_ndarray(format="rgb24")


def _decode(container, stream, needed: list[int], fps: float, *, seek: bool) -> tuple[dict[int, np.ndarray], int]:
    """Frames for the sorted indices ``needed``: each takes the first decoded frame whose index is >= it."""
    time_base = stream.time_base or Fraction(1, 1_000_000)
    start_pts = stream.start_time or 0
    if seek and needed[0] > 0:
        # half a frame early, so that a timestamp rounded down still lands on or before the wanted frame
        target = start_pts + int(math.floor((needed[0] - 0.5) / fps / time_base))
        container.seek(max(target, start_pts), stream=stream, backward=True, any_frame=False)
    out: dict[int, np.ndarray] = {}
    p, decoded, last_frame, last_index = 0, 0, None, -1
    for frame in container.decode(stream):
        decoded += 1
        last_frame = frame
        pts = frame.pts if frame.pts is not None else frame.dts
        index = round(float((pts - start_pts) * time_base) * fps) if pts is not None else last_index + 1
        if decoded == 1 and seek and index > needed[0] + 1:
            # the demuxer's index put us past the first wanted frame (rare: webm without cues): decode from the start
            container.seek(start_pts, stream=stream, backward=True, any_frame=False)
            out, more = _decode(container, stream, needed, fps, seek=False)
            return out, decoded + more
        last_index = index
        if index < needed[p]:
            continue
        last = _rgb(frame)                                             # (H, W, 3)
        while p < len(needed) and needed[p] <= index:
            out[needed[p]] = last
            p += 1
        if p == len(needed):
            break
    if p < len(needed) and last_frame is not None:                     # past the end: the video's last frame
        last = out.get(last_index)
        if last is None:
            last = _rgb(last_frame)                                    # (H, W, 3)
        out.update({i: last for i in needed[p:]})
    return out, decoded


def write_video(path: str | Path, frames: np.ndarray, fps: int = 16, *, codec: str | None = None,
                quality: int = 18, gop: int = 16) -> Path:
    """Encode RGB frames into a video file (the container from the file extension).

    Args:
        path: the output file (.mp4, .mkv, .mov, .webm or .avi).
        frames: (T, H, W, 3) uint8 RGB, H and W even (4:2:0 chroma).
        fps: frames per second.
        codec: an FFmpeg encoder name; default by extension (libx264, libvpx-vp9, mpeg4).
        quality: constant-rate factor of H.264 / VP9 (lower is better; 0 is lossless in YUV); MPEG-4 Part 2
            gets a fixed 8 Mbit/s.
        gop: keyframe interval in frames (seeking lands on keyframes).
    """
    av = _require_av()
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even for 4:2:0 video, got {frames.shape[1:3]}")
    ext = path.suffix.lower()
    if codec is None and ext not in _ENCODERS:
        raise ValueError(f"unknown video extension {ext!r}; expected one of {', '.join(_ENCODERS)}")
    codec = codec or _ENCODERS[ext]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        if codec in ("libx264", "libvpx-vp9"):
            stream.options = {"crf": str(quality), **({"b": "0"} if codec == "libvpx-vp9" else {})}
        else:                                                          # MPEG-4 Part 2: a generous bit rate
            stream.bit_rate = 8_000_000
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
