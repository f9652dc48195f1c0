"""``python -m clip4clip_dali.serve``: see :mod:`clip4clip_dali.archive.serve`."""
from .archive.serve import main  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

if __name__ == "__main__":
    from .errors import run_cli

    run_cli(main)
