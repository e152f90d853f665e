"""Pictures that explain the mechanisms: partitions, and what a query pixel attends to in a (trained) model.

* :func:`partition_ids` runs the library's own ``window_partition`` / ``grid_partition`` (with the same padding the
  attention modules use) on an index map, so the picture is exactly what the code computes, for any size.
* :func:`attention_maps` records the attention probabilities inside chosen attention modules during a forward pass
  (by wrapping the ``attend`` kernel those modules call) and maps their tokens back to map positions. Modules with a
  block/grid partition (``partition`` and ``partition_size`` attributes, e.g. MaxViT's) send a coordinate map through
  the same partition. Token-grid modules (``forward_tokens(x, size, prefix=)`` with ``query_size`` / ``key_size``,
  e.g. MViT's pooling attention) attend from a pooled query grid to a pooled key grid, 2-D (h, w) or 3-D (t, h, w)
  for video: the query's row is read at its position on the query grid and reshaped to the key grid, class token
  aside. Both are exact.
* :func:`receptive_field` is the generic fallback for any model: the input-gradient magnitude of one stage's
  feature at the query position (which pixels influence it), for mechanisms without an exact token map.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layers.partition import grid_partition, grid_reverse, pad_to_multiple, to_2tuple, window_partition, window_reverse

__all__ = [
    "attention_maps",
    "exact_attention_modules",
    "key_frame_spans",
    "partition_ids",
    "plot_attention",
    "plot_partitions",
    "plot_video_attention",
    "receptive_field",
]


def partition_ids(height: int, width: int, partition_size: int | tuple[int, int]) -> tuple[Tensor, Tensor, tuple]:
    """Group index of every pixel of an H x W map under window (block) and grid partition.

    Returns:
        block ids and grid ids, each (Hp, Wp) long tensors over the padded map, and the (pad_h, pad_w) amounts.
    """
    p = to_2tuple(partition_size)
    dummy, pad = pad_to_multiple(torch.zeros(1, height, width, 1), p)
    Hp, Wp = dummy.shape[1:3]
    n_groups = (Hp // p[0]) * (Wp // p[1])
    groups = torch.arange(n_groups, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, p[0], p[1], 1)  # (nG, p0, p1, 1)
    block = window_reverse(groups, p, (Hp, Wp))[0, ..., 0].long()     # (Hp, Wp)
    grid = grid_reverse(groups, p, (Hp, Wp))[0, ..., 0].long()         # (Hp, Wp)
    return block, grid, pad


def _is_partition_module(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("partition", "partition_size", "forward_cl"))


def _is_token_grid_module(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("forward_tokens", "query_size", "key_size"))


def exact_attention_modules(model: nn.Module) -> list[str]:
    """Names of modules whose tokens map to positions exactly: block / grid partition attention, and token-grid
    attention over pooled 2-D or 3-D maps (MViT's pooling attention)."""
    return [name for name, m in model.named_modules() if _is_partition_module(m) or _is_token_grid_module(m)]


def _token_coords(module: nn.Module, H: int, W: int) -> Tensor:
    """(nWin, N, 2) map coordinates (y, x) of the tokens of every window of ``module``'s partition."""
    p = to_2tuple(module.partition_size)
    Hp, Wp = H + (-H) % p[0], W + (-W) % p[1]
    coords = torch.full((1, Hp, Wp, 2), -1, dtype=torch.long)          # padding keeps (-1, -1)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    coords[0, :H, :W, 0], coords[0, :H, :W, 1] = ys, xs
    split = window_partition if module.partition == "block" else grid_partition
    return split(coords, p).reshape(-1, p[0] * p[1], 2)                 # (nWin, N, 2)


def _grid_index(position: Sequence[int], size: Sequence[int]) -> int:
    """Row-major flat index of ``position`` on a map of ``size`` (any number of axes: (h, w) or (t, h, w))."""
    index = 0
    for p, n in zip(position, size):
        index = index * n + p
    return index


def _on_grid(query: Sequence[float], size: Sequence[int]) -> tuple[int, ...]:
    """The cell of a map of ``size`` that holds ``query`` (fractions of each axis in [0, 1))."""
    return tuple(min(int(f * n), n - 1) for f, n in zip(query, size))


@contextlib.contextmanager
def _recording(model: nn.Module, names: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
    """Record q, k and bias of every ``attend`` call made while one of ``names`` runs forward."""
    records: list[dict[str, Any]] = []
    modules = dict(model.named_modules())
    active: list[str] = []
    hooks, patched = [], {}

    def make_recorder(original: Any) -> Any:
        def recorder(q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None = None, scale: float | None = None,
                     fused: bool | None = None) -> Tensor:
            if active:
                s = q.shape[-1] ** -0.5 if scale is None else scale
                logits = (q.float() * s) @ k.float().transpose(-2, -1)  # (B*nWin, heads, N, N)
                if bias is not None:
                    logits = logits + bias.float()
                records.append({"module": active[-1], "probs": logits.softmax(-1).detach()})
            return original(q, k, v, bias=bias, scale=scale, fused=fused)

        return recorder

    for name in names:
        module = modules[name]
        py_module = sys.modules[type(module).__module__]
        if hasattr(py_module, "attend") and py_module.__name__ not in patched:
            patched[py_module.__name__] = py_module.attend
            py_module.attend = make_recorder(py_module.attend)

        def pre(mod: nn.Module, args: Any, name: str = name) -> None:
            active.append(name)
            records.append({"module": name, "input_shape": tuple(args[0].shape)})

        def post(mod: nn.Module, args: Any, out: Any) -> None:
            active.pop()

        # MaxViT-style modules run through forward_cl, which module hooks do not see: wrap it.
        if hasattr(module, "forward_cl"):
            original_cl = module.forward_cl

            def wrapped(x: Tensor, _orig: Any = original_cl, _name: str = name, _mod: nn.Module = module) -> Tensor:
                pre(_mod, (x,), _name)
                try:
                    return _orig(x)
                finally:
                    active.pop()

            module.forward_cl = wrapped
            hooks.append(("forward_cl", module))
        elif _is_token_grid_module(module):
            # token-grid modules (MViT's pooling attention) are called through forward_tokens, with the map size
            original_tokens = module.forward_tokens

            def wrapped_tokens(x: Tensor, size: Sequence[int], *, prefix: int | None = None,
                               _orig: Any = original_tokens, _name: str = name) -> Any:
                size = tuple(int(n) for n in size)
                active.append(_name)
                records.append({"module": _name, "input_shape": tuple(x.shape), "size": size,
                                "prefix": x.shape[1] - math.prod(size) if prefix is None else prefix})
                try:
                    return _orig(x, size, prefix=prefix)
                finally:
                    active.pop()

            module.forward_tokens = wrapped_tokens
            hooks.append(("forward_tokens", module))
        else:
            hooks.append(("hook", module.register_forward_pre_hook(pre)))
            hooks.append(("hook", module.register_forward_hook(post)))
    try:
        yield records
    finally:
        for kind, item in hooks:
            if kind == "hook":
                item.remove()
            else:
                delattr(item, kind)                                    # back to the class method
        for mod_name, original in patched.items():
            sys.modules[mod_name].attend = original


def attention_maps(model: nn.Module, x: Tensor, query: Sequence[float],
                   names: Sequence[str]) -> list[dict[str, Any]]:
    """Head-averaged attention of the query position over its map, for each module in ``names``.

    Args:
        model: the model (eval mode).
        x: one input, an image (1, C, H, W) or a video clip (1, C, T, H, W).
        query: (y, x) as fractions of the image height and width, in [0, 1); for a video (t, y, x), t a fraction of
            the clip's frames (frame k of T: (k + 0.5) / T).
        names: module names from :func:`exact_attention_modules`.

    Returns:
        one dict per module: ``name``, ``map`` float tensor of attention weights over the key positions and
        ``query`` (the query's cell on the module's query map). Partition modules: ``map`` (h, w) over the module's
        input map, summing to 1 over the real pixels; ``partition`` "block" or "grid". Token-grid modules: ``map``
        over the pooled key grid, (h, w) or (t, h, w) for video; ``query_size`` and ``key_size`` (the pooled query
        and key grids); ``prefix_weight``, the weight on the class token (``map.sum() + prefix_weight`` is 1);
        ``partition`` None.
    """
    modules = dict(model.named_modules())
    with _recording(model, names) as records, torch.no_grad():
        model(x)
    out = []
    current: dict[str, Any] = {}
    for rec in records:
        if "input_shape" in rec:
            current = {"name": rec["module"], "shape": rec["input_shape"], "size": rec.get("size"),
                       "prefix": rec.get("prefix", 0)}
            continue
        if not current or current.get("done"):
            continue
        module = modules[current["name"]]
        if current["size"] is not None:
            out.append(_token_grid_map(module, current, rec["probs"], query))
            current["done"] = True
            continue
        if len(query) != 2:
            raise ValueError(f"{current['name']} attends over an image map: the query needs 2 fractions (y, x), got "
                             f"{tuple(query)}")
        _, H, W, _ = current["shape"]                                  # channels-last input (1, H, W, C)
        qy, qx = min(int(query[0] * H), H - 1), min(int(query[1] * W), W - 1)
        coords = _token_coords(module, H, W)                           # (nWin, N, 2)
        hit = ((coords[..., 0] == qy) & (coords[..., 1] == qx)).nonzero()[0]  # (window, token)
        probs = rec["probs"][hit[0]].mean(0)[hit[1]]                   # (N,) head-averaged row of the query
        amap = torch.zeros(H, W)
        keys = coords[hit[0]]                                          # (N, 2)
        real = keys[:, 0] >= 0
        amap[keys[real, 0], keys[real, 1]] = probs[real].cpu()
        out.append({"name": current["name"], "map": amap, "query": (qy, qx), "partition": module.partition})
        current["done"] = True
    return out


def _token_grid_map(module: nn.Module, current: dict[str, Any], probs: Tensor,
                    query: Sequence[float]) -> dict[str, Any]:
    """The query's head-averaged row of a token-grid module's attention, reshaped onto its pooled key grid."""
    size, prefix, name = current["size"], current["prefix"], current["name"]
    if len(query) != len(size):
        axes = "(t, y, x)" if len(size) == 3 else "(y, x)"
        raise ValueError(f"{name} attends over a {len(size)}-D token map {size}: the query needs {len(size)} "
                         f"fractions {axes}, got {tuple(query)}")
    q_size, k_size = module.query_size(size), module.key_size(size)
    if probs.shape[-2:] != (prefix + math.prod(q_size), prefix + math.prod(k_size)):
        raise ValueError(f"{name}: recorded attention {tuple(probs.shape)} does not match query grid {q_size} and "
                         f"key grid {k_size} with {prefix} class token(s)")
    q_pos = _on_grid(query, q_size)
    row = probs[0].mean(0)[prefix + _grid_index(q_pos, q_size)].float().cpu()  # (prefix + Nk,) of batch item 0
    return {"name": name, "map": row[prefix:].reshape(k_size),         # (*k_size): (h, w) or (t, h, w)
            "query": q_pos, "query_size": q_size, "key_size": k_size, "prefix_weight": float(row[:prefix].sum()),
            "partition": None}


def receptive_field(model: nn.Module, x: Tensor, query: tuple[float, float], stage: int) -> Tensor:
    """|d feature(stage, query) / d input| summed over channels: (H, W) map of what the query feature sees."""
    x = x.clone().requires_grad_(True)
    feats = model.forward_intermediates(x, intermediates_only=True)[stage]  # (1, C, h, w)
    h, w = feats.shape[-2:]
    qy, qx = min(int(query[0] * h), h - 1), min(int(query[1] * w), w - 1)
    feats[0, :, qy, qx].sum().backward()
    return x.grad[0].abs().sum(0).detach()                             # (H, W)


# --- figures -------------------------------------------------------------------------------------------------------

def plot_partitions(height: int, width: int, partition_size: int, path: str | Path,
                    query: tuple[int, int] | None = None) -> Path | None:
    """Side-by-side window (block) and grid partitions of an H x W map; one group highlighted in each.

    Pixels of one colour attend to each other. Padding added to reach a multiple of P is hatched grey.
    """
    from .plots import _save, have_matplotlib

    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    block, grid, pad = partition_ids(height, width, partition_size)
    Hp, Wp = block.shape
    qy, qx = query if query is not None else (0, 0)
    if not (0 <= qy < height and 0 <= qx < width):
        raise ValueError(f"--query {qy},{qx} is outside the {height}x{width} map")
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2 * Hp / max(Wp, 1) + 0.8))
    base = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    n_groups = int(block.max()) + 1
    P = to_2tuple(partition_size)
    for ax, ids, label in ((axes[0], block, "block (window)"), (axes[1], grid, "grid")):
        colors = ListedColormap(base[np.arange(n_groups) % 20])
        rgba = colors(ids.numpy() / max(n_groups - 1, 1))
        chosen = ids[qy, qx]
        rgba[..., 3] = np.where(ids.numpy() == int(chosen), 1.0, 0.35)
        rgba[height:, :, :3] = rgba[:, width:, :3] = 0.75              # padding: grey
        ax.imshow(rgba, interpolation="nearest")
        if Hp * Wp <= 1024:
            for (i, j), g in np.ndenumerate(ids.numpy()):
                ax.text(j, i, g, ha="center", va="center", fontsize=max(4, 9 - Hp // 8), color="black")
        if pad[0] or pad[1]:
            ax.add_patch(plt.Rectangle((-0.5, height - 0.5), Wp, pad[0], fill=False, hatch="//", lw=0))
            ax.add_patch(plt.Rectangle((width - 0.5, -0.5), pad[1], Hp, fill=False, hatch="//", lw=0))
        ax.plot([qx], [qy], marker="*", color="black", markersize=12)
        stride = f", stride {Hp // P[0]}x{Wp // P[1]}" if label == "grid" else ""
        ax.set_title(f"{label}: {n_groups} groups of {P[0]}x{P[1]} tokens{stride}\n"
                     f"(highlighted: the group of pixel {qy},{qx})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    pad_note = f", padded to {Hp}x{Wp} (hatched; masked as keys)" if pad[0] or pad[1] else ""
    fig.suptitle(f"{height}x{width} map, partition size P={P[0]}{pad_note}: each colour attends within itself")
    return _save(fig, path)


def plot_attention(image: Tensor, query: tuple[float, float], maps: Sequence[dict[str, Any]], path: str | Path,
                   title: str = "") -> Path | None:
    """The image with the query point, then each attention (or receptive-field) map overlaid on it."""
    from .plots import _save, have_matplotlib

    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    H, W = image.shape[-2:]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(4 * (1 + len(maps)), 4.4))
    axes = list(axes) if len(maps) else [axes]
    shown = image.permute(1, 2, 0).float().numpy() / 255.0
    qy, qx = query[0] * H, query[1] * W
    axes[0].imshow(shown)
    axes[0].set_title("input and query")
    for ax, m in zip(axes[1:], maps):
        amap = m["map"].float()
        up = F.interpolate(amap[None, None], size=(H, W), mode="nearest")[0, 0]
        ax.imshow(shown, alpha=0.5)
        ax.imshow(up.numpy(), cmap="inferno", alpha=0.6)
        ax.set_title(m.get("title", m["name"]), fontsize=9)
    for ax in axes:
        ax.plot([qx - 0.5], [qy - 0.5], marker="*", color="cyan", markersize=14, markeredgecolor="black")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def key_frame_spans(key_frames: int, frames: int) -> list[tuple[int, int]]:
    """The clip frames (first, last) each of ``key_frames`` key time steps stands for: the T frames divided evenly
    (the temporal counterpart of drawing a pooled map over the image with nearest-neighbour upsampling)."""
    return [(j * frames // key_frames, max(j * frames // key_frames, (j + 1) * frames // key_frames - 1))
            for j in range(key_frames)]


def plot_video_attention(frames: Tensor, frame: int, query: tuple[float, float], maps: Sequence[dict[str, Any]],
                         path: str | Path, title: str = "") -> Path | None:
    """One row per module: the query frame with the query point, then one panel per key time step, its (h, w) slice
    of the (t, h, w) attention map overlaid on the middle frame of the frames it stands for.

    Args:
        frames: the clip's frames, (T, 3, S, S) uint8.
        frame: the query frame, an index into ``frames``.
        query: (y, x) as fractions of the frame.
        maps: :func:`attention_maps` results of token-grid modules over a 3-D key grid.
        path: the PNG to write.
        title: the figure's title.

    A row shares one colour scale (0 to the row's largest weight), so the panels compare across time; the class
    token's weight is given in the row's first title.
    """
    from .plots import _save, have_matplotlib

    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    T, _, H, W = frames.shape
    cols = 1 + max(m["map"].shape[0] for m in maps)
    fig, axes = plt.subplots(len(maps), cols, figsize=(2.6 * cols, 2.9 * len(maps)), squeeze=False)
    shown = frames.permute(0, 2, 3, 1).float().numpy() / 255.0         # (T, S, S, 3)
    qy, qx = query[0] * H, query[1] * W
    for row, m in zip(axes, maps):
        amap = m["map"].float()                                        # (t, h, w)
        vmax = float(amap.max()) or 1.0
        row[0].imshow(shown[frame])
        row[0].plot([qx - 0.5], [qy - 0.5], marker="*", color="cyan", markersize=14, markeredgecolor="black")
        cls = f", class token {m['prefix_weight']:.3f}" if m.get("prefix_weight") else ""
        row[0].set_title(f"{m['name']}\nquery: clip frame {frame}{cls}", fontsize=8)
        spans = key_frame_spans(amap.shape[0], T)
        for ax, t_map, (a, b) in zip(row[1:], amap, spans):
            up = F.interpolate(t_map[None, None], size=(H, W), mode="nearest")[0, 0]
            ax.imshow(shown[(a + b) // 2], alpha=0.5)
            ax.imshow(up.numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
            label = f"clip frame {a}" if a == b else f"clip frames {a}-{b}"
            ax.set_title(f"{label}: {float(t_map.sum()):.3f}", fontsize=8)
            if a <= frame <= b:
                ax.plot([qx - 0.5], [qy - 0.5], marker="*", color="cyan", markersize=10, markeredgecolor="black")
        for ax in row[1 + len(spans):]:
            ax.axis("off")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def select(names: Sequence[str], pattern: str | None, prefix: str, count: int) -> list[str]:
    """Module names matching a shell pattern, or the first ``count`` under ``prefix``."""
    if pattern:
        return [n for n in names if fnmatch.fnmatch(n, pattern)]
    return [n for n in names if n.startswith(prefix)][:count]
