"""Trainer entry for tests, with one fault injected (chosen by CLIP4CLIP_FAULT).

- ``rank1_fails``: under torchrun, rank 1 raises at its second step.
- ``nan_at_step2``: the loss of the second step is NaN (one bad batch, weights still finite).
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clip4clip_dali import engine, train  # noqa: E402

FAULT = os.environ.get("CLIP4CLIP_FAULT", "")

if FAULT == "rank1_fails" and os.environ.get("RANK") == "1":
    _step = engine.Trainer.train_step

    def failing_step(self, batch, stop_requested):
        if self.state.step >= 1:
            raise RuntimeError("injected failure on rank 1")
        return _step(self, batch, stop_requested)

    engine.Trainer.train_step = failing_step

if FAULT == "nan_at_step2":
    _fb = engine.Trainer._forward_backward

    def nan_once(self, batch):
        loss = _fb(self, batch)
        return loss * torch.nan if self.state.step == 1 else loss

    engine.Trainer._forward_backward = nan_once

sys.exit(train.main(sys.argv[1:]))
