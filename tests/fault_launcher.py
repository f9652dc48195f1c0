"""Trainer entry for tests under torchrun, with a fault injected (chosen by CLIP4CLIP_FAULT).

- ``rank1_fails``: rank 1 raises at its second step.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clip4clip_dali import engine, train  # noqa: E402
from clip4clip_dali.errors import run_cli  # noqa: E402

FAULT = os.environ.get("CLIP4CLIP_FAULT", "")

if FAULT == "rank1_fails" and os.environ.get("RANK") == "1":
    _step = engine.Trainer.train_step

    def failing_step(self, batch, stop_requested):
        if self.state.step >= 1:
            raise RuntimeError("injected failure on rank 1")
        return _step(self, batch, stop_requested)

    engine.Trainer.train_step = failing_step

run_cli(lambda: train.main(sys.argv[1:]))
