"""The benchmark suite behind ``benchmarks/throughput.py``.

Modules, one job each:

- ``common``: logging, statistics, number formatting, machine facts (CPU, GPU, versions, peak).
- ``datasets``: the clip sets measured (drawn, a user's, and their 3 fps / pre-sampled copies
  made by ``pipelines/prepare_msvd.py``), and the config/split built on them.
- ``loaders``: builds each loader row's loader and says why a backend cannot read a set.
- ``timing``: timed passes over a loader; steady state over enough batches, first batch apart.
- ``loader_section`` / ``step_section`` / ``train_section``: one section each (``sections``).
- ``step_runner``: one training-step measurement (model, optimizer, compiled or eager).
- ``report``: the JSON document, its markdown and PNG, merging runs.
- ``sections``: the registry of sections, the one place a new section is added.
- ``cli``: flags and ``main``.
"""
