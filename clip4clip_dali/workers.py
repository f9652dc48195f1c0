"""Worker processes that start clean instead of forking this one.

A forked child inherits the parent's objects but none of its threads. Once a DALI pipeline has
run here (its executor owns threads), a forked child that garbage-collects the pipeline waits in
its destructor for threads that do not exist: the child hangs or crashes. Children forked from a
forkserver (a fresh process that has imported only ``preload``) inherit none of this, and after
the server's one start-up they start as fast as plain forks.
"""
from __future__ import annotations

import multiprocessing as mp


def clean_context(preload: tuple[str, ...] = ()):
    """A multiprocessing context for DataLoader workers and process pools."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    if preload:
        ctx.set_forkserver_preload(list(preload))  # ignored once the server runs
    return ctx
