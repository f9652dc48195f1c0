"""Use a trained model in your own code.

    from clip4clip_dali.api import load_model

    model = load_model("runs/demo/best.pt")              # CPU, or the first GPU when there is one
    t = model.encode_text(["a red circle moves to the left"])     # (1, D) float32, L2-normalised
    v = model.encode_videos(["clip1.webm", "clip2.mp4"])          # (2, D) float32, L2-normalised
    scores = t @ v.T                                               # cosine similarities

Videos are decoded with the loaders and the frame sampling the model was trained with (the
config saved in the checkpoint: ``data.max_frames``, ``feature_framerate``, ``slice_framepos``,
``image_resolution``): DALI for the codecs it decodes on the model's device, the PyAV reference
loader for the others (or for all of them with ``data.loader: reference``). Everything runs in
batches on the model's device, under the precision it was trained with.

``tightTransf`` has no video embedding of its own (its cross encoder sees text and frames
together): ``encode_videos`` refuses it; use ``encode_video_frames`` and ``score``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..config import Config
from ..errors import UserError
from ..retrieval import autocast_context
from ..runsetup import checkpoint_config, model_from_checkpoint

log = logging.getLogger("clip4clip_dali")


@dataclass
class EncodedFrames:
    """Per-frame features of the videos that decoded. ``index[i]`` is the position, in the
    list given, of row ``i``; ``failed`` maps the position of every other video to why."""

    index: np.ndarray  # (n,) int64
    frames: torch.Tensor  # (n, T, D) float32
    mask: torch.Tensor  # (n, T) int64, 1 on real frames
    failed: dict[int, str]


def probe_videos(paths: Sequence[str | Path]) -> list:
    """Manifest ``VideoInfo`` of each file (frame count, rate, size, codec; ``error`` set on a
    file that cannot be read), probed in threads, no cache."""
    from ..data.manifest import load_manifest

    found = load_manifest({str(i): p for i, p in enumerate(paths)}, cache_path=None)
    return [found[str(i)] for i in range(len(paths))]


def backend_groups(cfg: Config, infos: Sequence, device: torch.device) -> dict[str, list[int]]:
    """Positions of the videos each loader reads: ``dali`` where DALI decodes the video on
    ``device`` (and ``data.loader`` is not ``reference``), ``reference`` for the rest."""
    from ..data.loaders.dali_loader import dali_import_error, decoder_device, unsupported_reason

    everything = list(range(len(infos)))
    if cfg.data.loader == "reference" or dali_import_error() is not None:
        return {"reference": everything} if everything else {}
    where = decoder_device(device, cfg.data.dali_decoder)
    groups: dict[str, list[int]] = {}
    for i in everything:
        backend = "dali" if unsupported_reason(infos[i], where) is None else "reference"
        groups.setdefault(backend, []).append(i)
    return groups


def _loader(cfg: Config, backend: str, infos: Sequence, positions: list[int],
            device: torch.device, batch_size: int, windows: Sequence | None = None):
    from ..data.loaders.loader import build_loader
    from ..data.msvd import MSVDSplit

    split = MSVDSplit("videos", [str(p) for p in positions],
                      [Path(infos[p].path) for p in positions], [infos[p] for p in positions],
                      [], np.zeros(0, dtype=np.int64),
                      video_window=None if windows is None else [windows[p] for p in positions])
    run_cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, loader=backend),
        train=dataclasses.replace(cfg.train, eval_batch_size=batch_size))
    return build_loader(run_cfg, split, "eval", device=device, frame_cache=False)


class VideoTextModel:
    """A trained CLIP4Clip with its config, ready to encode captions and video files."""

    def __init__(self, model: torch.nn.Module, cfg: Config, checkpoint: str | None = None):
        self.model = model.eval()
        self.config = cfg
        self.checkpoint = checkpoint
        self.device = next(model.parameters()).device
        self.sim_header = cfg.model.sim_header
        # loose heads: separable text and video embeddings; tightTransf: a cross encoder
        self.separable = bool(getattr(model, "loose_type", True))
        self.embed_dim = int(getattr(model, "embed_dim", 0))
        self.batch_size = max(1, cfg.train.eval_batch_size)

    def _autocast(self):
        return autocast_context(self.config.train.precision, self.device)

    # ---------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N, D) float32 on the model's device: L2-normalised text embeddings (loose heads) or
        the EOT features the tightTransf cross encoder takes."""
        from ..data.text import Tokenizer

        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        tok = Tokenizer(self.config.data.max_words)
        out = []
        for s in range(0, len(texts), batch_size):
            ids, mask = tok(list(texts[s:s + batch_size]))
            with self._autocast():
                t = self.model.encode_text(ids.to(self.device), mask.to(self.device)).float()
            out.append(self.model.text_embedding(t) if self.separable else t)
        if not out:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.cat(out)

    # ---------------------------------------------------------------------------- video
    @torch.no_grad()
    def iter_frames(self, infos: Sequence, batch_size: int | None = None,
                    windows: Sequence | None = None
                    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """(positions, (b, T, D) frame features, (b, T) mask) batch by batch for the probed
        videos ``infos`` (``probe_videos``); a video that fails to decode never appears.
        ``windows[i]`` (whole seconds ``(start, end)`` or None) samples only that time window of
        video ``i``, as training samples a caption's window; ``infos`` may repeat a video."""
        batch_size = batch_size or self.batch_size
        usable = [i for i, info in enumerate(infos) if info.ok]
        groups = backend_groups(self.config, [infos[i] for i in usable], self.device)
        for backend, members in groups.items():
            positions = [usable[m] for m in members]
            loader = _loader(self.config, backend, infos, positions, self.device, batch_size,
                             windows)
            yield from self.iter_loader(loader, positions)

    @torch.no_grad()
    def iter_loader(self, loader, positions: Sequence[int]
                    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """``iter_frames`` over the batches of an evaluation ``loader`` whose video ``v`` is
        the one at ``positions[v]``."""
        for batch in loader:
            with self._autocast():
                f = self.model.encode_video(batch["video"], batch["video_mask"]).float()
            local = batch["video_index"].cpu().numpy()
            yield np.asarray(positions)[local], f, batch["video_mask"]

    def encode_video_frames(self, paths: Sequence[str | Path],
                            batch_size: int | None = None) -> EncodedFrames:
        """Per-frame features of video files; unreadable ones are reported in ``failed``."""
        infos = probe_videos(paths)
        failed = {i: info.error or "no frames" for i, info in enumerate(infos) if not info.ok}
        idx, frames, masks = [], [], []
        for pos, f, m in self.iter_frames(infos, batch_size):
            idx.append(pos)
            frames.append(f)
            masks.append(m)
        done = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
        for i in set(range(len(paths))) - set(done.tolist()) - set(failed):
            failed[i] = "failed to decode (see the log)"
        order = np.argsort(done, kind="stable")
        if frames:
            f, m = torch.cat(frames)[torch.from_numpy(order)], torch.cat(masks)[torch.from_numpy(order)]
        else:
            t = self.config.data.max_frames
            f = torch.zeros(0, t, self.embed_dim, device=self.device)
            m = torch.zeros(0, t, dtype=torch.int64, device=self.device)
        return EncodedFrames(done[order], f, m, failed)

    @torch.no_grad()
    def video_embeddings(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, T, D) frame features -> (N, D) L2-normalised video embeddings (loose heads)."""
        self._require_separable("video_embeddings")
        with self._autocast():
            return self.model.video_embedding(frames.to(self.device), mask.to(self.device)).float()

    def encode_videos(self, paths: Sequence[str | Path],
                      batch_size: int | None = None) -> torch.Tensor:
        """(N, D) float32 L2-normalised embeddings of the video files, in order. An unreadable
        file is an error naming it (``encode_video_frames`` reports them instead)."""
        self._require_separable("encode_videos")
        enc = self.encode_video_frames(paths, batch_size)
        if enc.failed:
            what = "; ".join(f"{paths[i]}: {why}" for i, why in sorted(enc.failed.items())[:5])
            raise UserError(f"{len(enc.failed)} of {len(paths)} video(s) could not be decoded "
                            f"({what}); leave them out, or use encode_video_frames, which "
                            f"reports them and encodes the rest.")
        return self.video_embeddings(enc.frames, enc.mask)

    # ---------------------------------------------------------------------------- scores
    @torch.no_grad()
    def score(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor,
              chunk: int = 256) -> torch.Tensor:
        """(Nt, Nv) scores of ``encode_text`` rows against per-frame video features, ``chunk``
        videos at a time: cosine similarity for the loose heads; for tightTransf the cross
        encoder's logit of every (text, video) pair (much slower)."""
        text = text.to(self.device)
        rows = []
        for s in range(0, frames.shape[0], chunk):
            f, m = frames[s:s + chunk].to(self.device).float(), mask[s:s + chunk].to(self.device)
            with self._autocast():
                if self.separable:
                    rows.append(text @ self.model.video_embedding(f, m).float().t())
                else:
                    rows.append(self.model.similarity(text, f, m).float())
        if not rows:
            return torch.zeros(text.shape[0], 0, device=self.device)
        return torch.cat(rows, dim=1)

    def _require_separable(self, what: str) -> None:
        if not self.separable:
            raise UserError(f"{what}: model.sim_header is {self.sim_header}, whose cross encoder "
                            f"scores text and frames together: there is no video embedding on "
                            f"its own. Use encode_video_frames(paths) and score(text, frames, "
                            f"mask).")


def load_model(checkpoint: str | Path, config: Config | None = None,
               device: str | torch.device | None = None) -> VideoTextModel:
    """The model of a checkpoint written by ``clip4clip_dali.train`` (``best.pt``,
    ``latest.pt``), built from the config saved in it (``config`` for a bare state dict), on
    ``device`` (default: the first GPU if any, else the CPU), in eval mode."""
    cfg = checkpoint_config(checkpoint, config)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_from_checkpoint(checkpoint, cfg, torch.device(device))
    return VideoTextModel(model, cfg, str(checkpoint))
