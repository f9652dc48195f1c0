"""The registry of benchmark sections: the one place a section is added.

A section is a module with:

- ``NAME``: its key in ``--sections`` and in the JSON document;
- ``DEFAULT``: whether a run without ``--sections`` includes it;
- ``QUICK``: flag values ``--quick`` sets (unless given explicitly);
- ``add_args(parser)``: its own flags (shared data flags live in ``datasets``);
- ``run(ctx)``: measures, writing rows into ``ctx.rep.doc[NAME]`` and ``ctx.rep.flush()`` after
  each (``ctx``: ``cli.Context`` with args, rep, device, has_cuda, peak, peak_src);
- ``markdown(doc) -> list[str]``, ``targets(doc) -> list[dict]`` (target, measured, met
  yes/no/n/a, note), ``plot(doc)`` (a bar panel or None) and ``merge(into_doc, section)``.
"""
from __future__ import annotations

from . import decoders_section, loader_section, search_section, step_section, train_section

SECTIONS = [
    loader_section,
    step_section,
    train_section,
    decoders_section,
    search_section,
]
BY_NAME = {s.NAME: s for s in SECTIONS}
