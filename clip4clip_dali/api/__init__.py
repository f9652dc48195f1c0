"""``from clip4clip_dali.api import load_model``: the library API, kept at its old address.

The code lives in :mod:`clip4clip_dali.archive.api` (the search side's wing). This is a
package rather than an ``api.py`` so that git follows the move of the old file.
"""
from ..archive.api import (EncodedFrames, VideoTextModel, backend_groups, load_model,  # noqa: F401
                           probe_videos)

__all__ = ["EncodedFrames", "VideoTextModel", "backend_groups", "load_model", "probe_videos"]
