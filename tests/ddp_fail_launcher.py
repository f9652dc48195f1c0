"""torchrun entry for tests: the trainer, with rank 1 failing at its second step."""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clip4clip_dali import engine, train  # noqa: E402

if os.environ.get("RANK") == "1":
    _step = engine.Trainer.train_step

    def failing_step(self, batch, stop_requested):
        if self.state.step >= 1:
            raise RuntimeError("injected failure on rank 1")
        return _step(self, batch, stop_requested)

    engine.Trainer.train_step = failing_step

sys.exit(train.main(sys.argv[1:]))
