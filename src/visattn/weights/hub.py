"""Fetch a weights file into the local caches: Hugging Face Hub files through ``huggingface_hub`` (its cache,
``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` honoured), URLs through the torch hub cache
(``torch.hub.get_dir()/checkpoints``) with the publisher's SHA-256 prefix checked on download.

Offline, or with the source unreachable, one :class:`WeightsUnavailableError` says what was asked for, which cache
folder was looked in, and how to put the file there by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["WeightsUnavailableError", "fetch", "hf_cache_dir", "is_remote", "offline", "torch_hub_checkpoints_dir"]

_TRUE = {"1", "on", "yes", "true"}


class WeightsUnavailableError(OSError):
    """A weights file that is neither cached nor downloadable now."""


def is_remote(source: object) -> bool:
    """Whether ``source`` is a ``hf-hub:`` / ``http(s)://`` / ``file://`` reference rather than a local path."""
    return isinstance(source, str) and source.startswith(("hf-hub:", "http://", "https://", "file://"))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, applied to URLs too."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hf_cache_dir() -> Path:
    """The Hub cache folder as huggingface_hub resolves it, read now (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else
    ``XDG_CACHE_HOME``/huggingface/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _split_hub(source: str) -> tuple[str, str]:
    rest = source[len("hf-hub:"):].strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"expected hf-hub:ORG/REPO or hf-hub:ORG/REPO/FILE, got {source!r}")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return repo, filename or "model.safetensors"


def _fetch_hub(source: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise ImportError("loading hf-hub: weights needs huggingface_hub: pip install 'visattn[hub]'") from err
    repo, filename = _split_hub(source)
    cache = hf_cache_dir()
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache, local_files_only=offline()))
    except Exception as err:  # offline miss, no such repo / file, no network: one message with the way out
        folder = cache / f"models--{repo.replace('/', '--')}"
        mode = "HF_HUB_OFFLINE is set and the file is not cached" if offline() else f"download failed ({err})"
        raise WeightsUnavailableError(
            f"cannot get {filename!r} from the Hugging Face Hub repo {repo!r}: {mode}. Cache folder: {cache}. To place "
            f"it by hand, on a connected machine run `huggingface-cli download {repo} {filename}` and copy {folder.name}"
            f" into {cache}, or put the file at {folder}/snapshots/<any-name>/{filename} and write <any-name> into "
            f"{folder}/refs/main; or pass the local file's path instead."
        ) from err


def _fetch_url(url: str, hash_prefix: str | None) -> Path:
    import torch.hub

    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise ValueError(f"URL {url!r} names no file")
    folder = torch_hub_checkpoints_dir()
    target = folder / name
    if target.is_file():
        return target
    hint = (f"Cache folder: {folder}. To place it by hand, download {url} on a connected machine and copy it to "
            f"{target}, or pass the local file's path instead.")
    if offline() and not url.startswith("file://"):
        raise WeightsUnavailableError(f"cannot get {url}: HF_HUB_OFFLINE is set and the file is not cached. {hint}")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix, progress=False)
    except RuntimeError as err:
        if "invalid hash value" in str(err):
            raise ValueError(f"{url}: the file's SHA-256 does not start with the published {hash_prefix!r} ({err}); "
                             "it was not kept") from err
        raise WeightsUnavailableError(f"cannot download {url}: {err}. {hint}") from err
    except OSError as err:
        raise WeightsUnavailableError(f"cannot download {url}: {err}. {hint}") from err
    return target


def fetch(source: str, *, hash_prefix: str | None = None) -> Path:
    """The local path of a weights file, downloading it into the right cache first if needed.

    Args:
        source: ``hf-hub:ORG/REPO[/FILE]`` (FILE defaults to model.safetensors), an ``http(s)://`` or ``file://``
            URL (cached under ``torch.hub.get_dir()/checkpoints`` by file name), or a local path.
        hash_prefix: leading hex digits of the file's SHA-256, checked when a URL is downloaded.

    Raises:
        WeightsUnavailableError: not cached and not downloadable now (offline, unreachable, no such file).
        ValueError: a downloaded file whose hash does not match ``hash_prefix``, or a malformed source.
    """
    if source.startswith("hf-hub:"):
        return _fetch_hub(source)
    if source.startswith(("http://", "https://", "file://")):
        return _fetch_url(source, hash_prefix)
    return Path(source)
