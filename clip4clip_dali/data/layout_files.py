"""What the DiDeMo, ActivityNet and LSMDC readers share: their annotation files named under
``data.data_path``, and a listed video's file found under ``data.features_path`` by its file
name or its name without the extension, as the original's loaders walk the folder."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .split import VIDEO_EXTENSIONS, DatasetError, SplitListing, default_manifest_path

if TYPE_CHECKING:
    from ..config import DataConfig


def require_split(split: str, splits: tuple[str, ...], layout: str, note: str = "") -> None:
    if split not in splits:
        raise DatasetError(f"{layout} has the splits {', '.join(splits)}{note}, not {split!r}; "
                           f"set data.train_split / val_split / test_split to one of them.")


def annotation_file(data_cfg: "DataConfig", name: str, layout: str, holds: str) -> Path:
    path = Path(data_cfg.data_path) / name
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; data.data_path ({data_cfg.data_path}) must "
                           f"be the folder of {layout}'s annotations ({holds}).")
    return path


def match_videos(listed: list[str], found: dict[str, Path]) -> dict[str, Path]:
    """Files for ``listed`` ids: a file named exactly the id (DiDeMo lists 'name.mov'), else
    one whose name without its extension is the id, or the id without a video extension (a
    prepared copy of 'name.mov' is 'name.webm')."""
    by_name = {p.name: p for p in found.values()}
    out = {}
    for vid in listed:
        stem = Path(vid).stem if Path(vid).suffix.lower() in VIDEO_EXTENSIONS else vid
        path: Optional[Path] = by_name.get(vid) or found.get(vid) or found.get(stem)
        if path is not None:
            out[vid] = path
    return out


def listing(data_cfg: "DataConfig", split: str, listed: list[str], found: dict[str, Path],
            captions: dict, caption_source: Path, windows: Optional[dict] = None,
            notes: Optional[list[str]] = None) -> SplitListing:
    features_path = Path(data_cfg.features_path)
    return SplitListing(split, listed, match_videos(listed, found), captions,
                        default_manifest_path(features_path), f"under {features_path}",
                        str(caption_source), windows=windows or {}, notes=notes or [])
