"""PNG figures: attention maps over their images, and training curves."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from finetune.images import resize_map  # noqa: E402


def _show(ax, image: torch.Tensor, m: torch.Tensor | None, title: str) -> None:
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    if m is not None:
        ax.imshow(resize_map(m, tuple(image.shape[-2:]))[0].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def attention_grid(
    images: torch.Tensor, maps: torch.Tensor, titles: list[str], path: str | Path, cols: int = 8
) -> None:
    """images N x 3 x H x W in [0, 1], each with its map (N x 1 x h x w) overlaid."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, m, title in zip(axes.flat, images, maps, titles):
        _show(ax, image, m, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def map_rows(rows: list[tuple[torch.Tensor, list[torch.Tensor | None]]], headers: list[str], path: str | Path) -> None:
    """One row per image: the image with each of its maps in turn (None = the bare image)."""
    cols = len(headers)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.8 * cols, 1.8 * len(rows)), squeeze=False)
    for r, (image, maps) in enumerate(rows):
        for c, m in enumerate(maps):
            _show(axes[r, c], image, m, headers[c] if r == 0 else "")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves(history: list[dict], keys: list[str], path: str | Path) -> None:
    """One line per key of the per-epoch records in history."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for k in keys:
        ax.plot(epochs, [h[k] for h in history], marker="o", markersize=3, label=k)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
