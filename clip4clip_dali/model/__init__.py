"""CLIP4Clip on open_clip towers: ``CLIP4Clip.from_config(cfg.model, max_words, max_frames)``."""
from .clip4clip import CLIP4Clip, SIM_HEADERS

__all__ = ["CLIP4Clip", "SIM_HEADERS"]
