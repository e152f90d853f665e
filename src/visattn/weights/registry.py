"""Published weights that load into visattn models: one :class:`WeightsEntry` per tag.

A tag names one released file for one visattn variant, written ``<model>.<tag>`` (``maxvit_tiny.in1k_384``). Each
entry says where the file is (a Hugging Face Hub repo + file, or a URL with the publisher's hash where one is
given), which key layout it has (the model's own ``remap_state_dict`` turns timm, torchvision and official keys
into visattn's), which config fields the weights need (a 384 MaxViT has partition size 12), and the pretrained cfg
(input size, mean / std, crop, interpolation, classes, label names) as the publisher's evaluation uses it.

timm's and torchvision's names are aliases: ``maxvit_tiny_tf_224.in1k`` resolves to ``maxvit_tiny.in1k_224``,
``maxvit_tiny_tf_384`` to that name's first tag, ``mvit_v2_s`` to ``mvitv2_small_video.tv_kinetics400``. A visattn
variant's default tag is its first entry here.

Sources and cfgs: timm 1.0.31 ``default_cfgs`` (``models/maxxvit.py``, ``davit.py``, ``mvitv2.py``), torchvision
0.28 ``models/video/mvit.py`` (URLs, hashes, transforms, acc@1), ofsoundof/GRL-Image-Restoration release v1.0.0.
What does not map onto a visattn variant is listed in ``LEFT_OUT``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["WeightsEntry", "LEFT_OUT", "list_pretrained", "get_weights", "resolve_pretrained", "default_tag",
           "label_names", "label_ids"]

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True, kw_only=True)
class WeightsEntry:
    """One published weights file and what a model needs to use it.

    Attributes:
        model: the visattn variant the weights load into.
        tag: the tag; ``name`` is ``model.tag``.
        layout: whose key names the file has: "timm", "torchvision" or "official" (the model's ``remap_state_dict``
            turns each into visattn's).
        hf_hub_id / hf_filename: Hugging Face Hub repository and file (preferred when given).
        url: a direct download URL (used when there is no Hub repository).
        hash_prefix: the leading hex digits of the file's SHA-256 as the publisher gives them (torchvision's file
            names carry one); None where the publisher gives none.
        overrides: config fields these weights need, as (field, value) pairs (partition size, classes, scale).
        input_size: (C, H, W) or (C, T, H, W) the publisher evaluates at.
        mean, std, crop_pct, crop_mode, interpolation: the publisher's evaluation preprocessing (timm's meanings).
        transform: whose evaluation transform those fields describe: "timm" (``transforms_imagenet_eval``) or
            "torchvision_video" (torchvision's ``VideoClassification`` preset: short side to ``crop / crop_pct``,
            bilinear without antialiasing, centre crop; see ``tasks/video/sampling.py``).
        frame_stride: video: frames of the file between two clip frames (16x4: 4); None for images.
        views: video: the evaluation views "KxS" (K temporal clips x S spatial crops) the publisher's accuracy
            averages; None for images.
        num_classes: the classifier width of the file (0: not a classifier).
        labels: "imagenet1k" / "kinetics400" (a label names file shipped with visattn) or None.
        top1: the publisher's top-1 accuracy (%), where the publisher's metadata gives it.
        aliases: timm / torchvision names that resolve to this entry.
        license: the weights' licence as the publisher states it.
        notes: anything a user should know before loading.
    """

    model: str
    tag: str
    layout: str
    hf_hub_id: str | None = None
    hf_filename: str = "model.safetensors"
    url: str | None = None
    hash_prefix: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    input_size: tuple[int, ...] = (3, 224, 224)
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD
    crop_pct: float = 0.875
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    transform: str = "timm"
    frame_stride: int | None = None
    views: str | None = None
    num_classes: int = 1000
    labels: str | None = None
    top1: float | None = None
    aliases: tuple[str, ...] = ()
    license: str = ""
    notes: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def source(self) -> str:
        """Where the file comes from: ``hf-hub:repo/file`` or the URL."""
        return f"hf-hub:{self.hf_hub_id}/{self.hf_filename}" if self.hf_hub_id else str(self.url)

    def config_overrides(self) -> dict[str, Any]:
        """The config fields these weights need, with ``num_classes`` (a user's own overrides go on top)."""
        return {**({"num_classes": self.num_classes} if self.num_classes else {}), **dict(self.overrides)}

    def preprocessing(self) -> dict[str, Any]:
        """Size, crop and normalisation of the publisher's evaluation (for video also the clip stride and views),
        and the label names (None if none)."""
        return {"input_size": self.input_size, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode,
                "mean": self.mean, "std": self.std, "interpolation": self.interpolation, "transform": self.transform,
                "frame_stride": self.frame_stride, "views": self.views,
                "label_names": label_names(self.labels) if self.labels else None,
                "label_ids": label_ids(self.labels) if self.labels else None}

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` dict for these weights (``hf_hub_id``, ``url``, ``tag`` and data config)."""
        cfg = {"architecture": self.model, "tag": self.tag, "hf_hub_id": self.hf_hub_id,
               "hf_hub_filename": self.hf_filename if self.hf_hub_id else None, "url": self.url or "",
               "num_classes": self.num_classes, "input_size": self.input_size, "crop_pct": self.crop_pct,
               "crop_mode": self.crop_mode, "interpolation": self.interpolation, "mean": self.mean, "std": self.std,
               "license": self.license}
        return cfg


def _p(size: int) -> tuple[tuple[str, Any], ...]:
    # MaxViT partition size for an input size: 224 -> 7, 384 -> 12, 512 -> 16 (input / 32 as the official
    # fine-tuning configs and timm's maxvit_*_tf_{224,384,512} window sizes).
    return (("partition_size", size // 32),)


def _maxvit() -> list[WeightsEntry]:
    # timm maxxvit.py default_cfgs: in1k 224 tags use ImageNet mean / std with crop 0.95; every other tag the
    # _cfg default mean = std = 0.5; 384 / 512 tags crop_pct 1.0 with crop_mode "squash".
    out = []
    for size_name in ("tiny", "small", "base", "large"):
        for size in (224, 384, 512):
            timm_name = f"maxvit_{size_name}_tf_{size}"
            extra = (dict(mean=_IMAGENET_MEAN, std=_IMAGENET_STD, crop_pct=0.95) if size == 224
                     else dict(mean=_HALF, std=_HALF, crop_pct=1.0, crop_mode="squash"))
            out.append(WeightsEntry(model=f"maxvit_{size_name}", tag=f"in1k_{size}", layout="timm",
                                    hf_hub_id=f"timm/{timm_name}.in1k", overrides=_p(size),
                                    input_size=(3, size, size), labels="imagenet1k", aliases=(f"{timm_name}.in1k",),
                                    license="apache-2.0", **extra))
    for size_name in ("base", "large", "xlarge"):
        timm_name = f"maxvit_{size_name}_tf_224"
        out.append(WeightsEntry(model=f"maxvit_{size_name}", tag="in21k_224", layout="timm",
                                hf_hub_id=f"timm/{timm_name}.in21k", overrides=_p(224), num_classes=21843,
                                mean=_HALF, std=_HALF, crop_pct=0.95, aliases=(f"{timm_name}.in21k",),
                                license="apache-2.0", notes="ImageNet-21k head (21843 classes); no label file shipped"))
        for size in (384, 512):
            timm_name = f"maxvit_{size_name}_tf_{size}"
            out.append(WeightsEntry(model=f"maxvit_{size_name}", tag=f"in21k_ft_in1k_{size}", layout="timm",
                                    hf_hub_id=f"timm/{timm_name}.in21k_ft_in1k", overrides=_p(size),
                                    input_size=(3, size, size), mean=_HALF, std=_HALF, crop_pct=1.0,
                                    crop_mode="squash", labels="imagenet1k",
                                    aliases=(f"{timm_name}.in21k_ft_in1k",), license="apache-2.0"))
    # maxvit_xlarge has no in1k tag: its default is the first xlarge entry above (in21k_224).
    return out


def _davit() -> list[WeightsEntry]:
    # timm davit.py: official Microsoft weights (dingmyu/davit) re-hosted on the Hub, ImageNet mean / std, crop 0.95.
    return [WeightsEntry(model=f"davit_{s}", tag="msft_in1k", layout="timm", hf_hub_id=f"timm/davit_{s}.msft_in1k",
                         crop_pct=0.95, labels="imagenet1k", aliases=(f"davit_{s}.msft_in1k",), license="apache-2.0")
            for s in ("tiny", "small", "base")]


def _mvitv2() -> list[WeightsEntry]:
    # timm mvitv2.py: facebookresearch/mvit weights re-hosted on the Hub (the .pyth originals are pickles), crop 0.9.
    out = [WeightsEntry(model=f"mvitv2_{s}", tag="fb_in1k", layout="timm", hf_hub_id=f"timm/mvitv2_{s}.fb_in1k",
                        crop_pct=0.9, labels="imagenet1k", aliases=(f"mvitv2_{s}.fb_in1k",), license="apache-2.0")
           for s in ("tiny", "small", "base", "large")]
    out += [WeightsEntry(model=f"mvitv2_{s}_cls", tag="fb_inw21k", layout="timm",
                         hf_hub_id=f"timm/mvitv2_{s}_cls.fb_inw21k", crop_pct=0.9, num_classes=19168,
                         aliases=(f"mvitv2_{s}_cls.fb_inw21k",), license="apache-2.0",
                         notes="ImageNet-21k winter-2021 head (19168 classes); no label file shipped")
            for s in ("base", "large", "huge")]
    return out


def _torchvision() -> list[WeightsEntry]:
    # torchvision 0.28 models/video/mvit.py: VideoClassification(crop_size=(224, 224), resize_size=(256,),
    # mean=(0.45,) * 3, std=(0.225,) * 3), bilinear resize; the hash prefix is the 8 hex digits in the file name.
    # Clips: its weights' docs evaluate clip_len=16 at frame_rate=7.5 with clips_per_video=5, i.e. 16 frames 4 apart
    # on Kinetics' 30 fps videos, 5 clips: the MViT 16x4 protocol with PySlowFast's 5x1 test views
    # (paper_tables 3.7.2). visattn strides over the file's own frames (4), whatever its frame rate.
    common = dict(tag="tv_kinetics400", layout="torchvision", input_size=(3, 16, 224, 224), mean=(0.45, 0.45, 0.45),
                  std=(0.225, 0.225, 0.225), crop_pct=224 / 256, interpolation="bilinear",
                  transform="torchvision_video", frame_stride=4, views="5x1", num_classes=400, labels="kinetics400",
                  license="bsd-3-clause")
    return [
        WeightsEntry(model="mvit_v1_base_16x4", url="https://download.pytorch.org/models/mvit_v1_b-dbeb1030.pth",
                     hash_prefix="dbeb1030", top1=78.477, aliases=("mvit_v1_b", "mvit_v1_b.kinetics400_v1"),
                     **common),
        WeightsEntry(model="mvitv2_small_video", url="https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth",
                     hash_prefix="ae3be167", top1=80.757, aliases=("mvit_v2_s", "mvit_v2_s.kinetics400_v1"),
                     **common),
    ]


_GRL_RELEASE = "https://github.com/ofsoundof/GRL-Image-Restoration/releases/download/v1.0.0/"


def _grl() -> list[WeightsEntry]:
    # Official release assets (file names as published); the release gives no hashes. Inputs in [0, 1], the model
    # subtracts the DIV2K mean itself: identity normalisation. Lightning .ckpt files: torch.load(weights_only=True)
    # refuses one that pickles non-tensor state (extract its state_dict once with a trusted torch.load).
    common = dict(layout="official", input_size=(3, 64, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0,
                  interpolation="bicubic", num_classes=0, license="see ofsoundof/GRL-Image-Restoration")
    files = [
        ("grl_tiny", "official_sr_c3x4", "sr_grl_tiny_c3x4.ckpt", (), "SR x4, RGB"),
        ("grl_tiny", "official_sr_c3x3", "sr_grl_tiny_c3x3.ckpt", (("upscale", 3),), "SR x3, RGB"),
        ("grl_small_denoise", "official_dn_c3s15", "dn_grl_small_c3s15.ckpt", (), "colour denoising, sigma 15"),
        ("grl_base_denoise", "official_dn_c3s50", "dn_grl_base_c3s50.ckpt", (), "colour denoising, sigma 50"),
        ("grl_base_denoise", "official_dn_c1s25", "dn_grl_base_c1s25.ckpt", (("in_chans", 1),),
         "grayscale denoising, sigma 25"),
        ("grl_small_jpeg", "official_jpeg_c3q20", "jpeg_grl_small_c3q20.ckpt", (),
         "colour JPEG artefact removal, quality 20 (--task jpeg --quality 20)"),
        ("grl_small_jpeg_gray", "official_jpeg_c1q30", "jpeg_grl_small_c1q30.ckpt", (("in_chans", 1),),
         "grey JPEG artefact removal, quality 30 (--task jpeg --quality 30)"),
        ("grl_small_demosaic", "official_dm", "dm_grl_small.ckpt", (), "demosaicking (--task demosaic)"),
    ]
    return [WeightsEntry(model=m, tag=t, url=_GRL_RELEASE + f, overrides=o,
                         **{**common, "input_size": (dict(o).get("in_chans", 3), 64, 64)}, aliases=(f[:-5],),
                         notes=n)
            for m, t, f, o, n in files]


# Published tags that do not map onto a visattn variant, and why.
LEFT_OUT: dict[str, str] = {
    "maxvit_*_rw_*, maxvit_rmlp_*_rw_*, maxxvit*_rw_*, coatnet*_rw_* (timm)": (
        "Ross Wightman's MaxViT / MaxxViT / CoAtNet re-designs (other stems, norms, MLP relative position bias, "
        "pre-norm MBConv); visattn implements the paper's (official TF) MaxViT only"),
    "davit_base_fl.msft_florence2, davit_huge_fl.msft_florence2 (timm)": (
        "Florence-2 vision towers: window 12, 3x3 downsampling kernels, channel attention v2 and named blocks, "
        "which DaViTConfig does not express; no classifier (num_classes=0)"),
    "davit_large, davit_huge, davit_giant (timm)": "timm registers them without weights (none published)",
    "mvitv2_small_cls (timm)": "timm registers it without weights",
    "dn_grl_tiny_c1 (GRL release)": "the release names no noise level and its config is not documented",
    "jpeg_grl_small_c3 (GRL release)": (
        "JPEG artefact removal without a quality factor in its name; which quality it was trained for is not "
        "documented"),
    "db_motion_grl_base_gopro (GRL release)": "motion deblurring: no visattn deblurring variant",
    "bsr_grl_base (GRL, Google Drive)": "real-world SR, not a release asset (a Drive link), no variant",
    "CloFormer": "the authors publish no weights (docs/cloformer.md)",
    "CAT-Net": ("the authors publish no weights (docs/catnet.md); its ResNet backbone takes torchvision's "
                "ImageNet ResNet weights through --backbone-weights"),
}


@cache
def _entries() -> dict[str, WeightsEntry]:
    out: dict[str, WeightsEntry] = {}
    for entry in _maxvit() + _davit() + _mvitv2() + _torchvision() + _grl():
        if entry.name in out:
            raise ValueError(f"weights tag {entry.name!r} registered twice")
        out[entry.name] = entry
    return out


@cache
def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in _entries().values():
        for alias in entry.aliases:
            out[alias] = entry.name
            base = alias.split(".", 1)[0]
            out.setdefault(base, entry.name)                     # timm name without tag: its first tag
    return out


def list_pretrained(pattern: str = "*") -> list[WeightsEntry]:
    """Every registered entry whose ``model.tag`` name matches the shell-style ``pattern``, in registry order."""
    import fnmatch

    return [e for n, e in _entries().items() if fnmatch.fnmatch(n, pattern)]


def default_tag(model: str) -> WeightsEntry | None:
    """The default weights of visattn variant ``model`` (its first entry), or None if none are published."""
    return next((e for e in _entries().values() if e.model == model), None)


def get_weights(name: str) -> WeightsEntry:
    """The entry for ``model.tag`` or an alias (timm / torchvision name, with or without its tag)."""
    entries = _entries()
    if name in entries:
        return entries[name]
    if name in _aliases():
        return entries[_aliases()[name]]
    entry = default_tag(name)
    if entry is not None:
        return entry
    known = list(entries) + list(_aliases())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See `visattn list --pretrained`."
    reason = next((why for what, why in LEFT_OUT.items() if name.split("_")[0].lower() in what.lower()), None)
    if reason and not close:
        hint += f" ({reason})"
    raise ValueError(f"no published weights named {name!r}.{hint}")


def resolve_pretrained(name_or_tag: str) -> tuple[str, WeightsEntry]:
    """(visattn model name, weights entry) for a visattn name (its default tag), ``model.tag``, or a timm /
    torchvision name or tag. Raises a ``ValueError`` naming close matches for anything else."""
    entry = get_weights(name_or_tag)
    return entry.model, entry


@cache
def label_names(labels: str) -> list[str]:
    """The class names of a label set shipped with visattn: "imagenet1k" (WordNet lemmas, in class index order)
    or "kinetics400"."""
    return [row.split("\t", 1)[1] if "\t" in row else row for row in _label_rows(labels)]


@cache
def label_ids(labels: str) -> list[str] | None:
    """The class ids of a label set in class index order (ImageNet's WordNet synsets, ``n01440764``...), or None
    where the set has names only (kinetics400)."""
    rows = _label_rows(labels)
    return [row.split("\t", 1)[0] for row in rows] if all("\t" in row for row in rows) else None


@cache
def _label_rows(labels: str) -> list[str]:
    files = {"imagenet1k": "imagenet1k_labels.txt", "kinetics400": "kinetics400_labels.txt"}
    if labels not in files:
        raise ValueError(f"unknown label set {labels!r}; expected one of {sorted(files)}")
    text = resources.files(__package__).joinpath("data", files[labels]).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def pool_size(input_size: tuple[int, ...], reduction: int) -> tuple[int, ...]:
    """The final feature map size of an input (timm's ``pool_size``): ceil(size / total stride) per spatial axis."""
    return tuple(math.ceil(s / reduction) for s in input_size[-2:])

