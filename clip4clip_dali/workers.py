"""Worker processes that start clean instead of forking this one, and die with it.

A forked child inherits the parent's objects but none of its threads. Once a DALI pipeline has
run here (its executor owns threads), a forked child that garbage-collects the pipeline waits in
its destructor for threads that do not exist: the child hangs or crashes. Children forked from a
forkserver (a fresh process that has imported only ``preload``) inherit none of this, and after
the server's one start-up they start as fast as plain forks.

Two things the standard forkserver does not do, done here for every worker:

- **Die with the process that started it.** A forkserver child's parent is the server, not us,
  and every child holds the server's "alive" pipe open: after a SIGKILL of the main process the
  server and its workers waited for each other forever (1.6 GB left by ``index``). Each worker
  watches its starter through a pidfd (Linux; a 0.5 s poll elsewhere) and exits when it ends;
  when the last worker is gone the server sees its pipe close and exits too.
  Ranks started by torchrun watch their agent the same way (``die_with_parent``).
- **Not re-run the user's script.** Like ``spawn``, the forkserver imports the main script in
  every child; a plain script that calls our API without an ``if __name__ == "__main__":``
  guard then starts the workers again from inside a worker and crashes. Our workers run only
  library code, so they skip that import.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.context as mpc
import multiprocessing.spawn as mp_spawn
import os
import select
import threading
import time

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
_launch_lock = threading.Lock()


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux) or already gone
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.5)


def _die_with(pid: int) -> None:
    def watch():
        _wait_for_exit(pid)
        os._exit(1)  # the starter is gone: nobody reads what this worker makes

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def die_with_parent() -> None:
    """End this process when its parent ends (a torchrun rank with its agent: the agent starts
    ranks in sessions of their own, so a SIGKILL of torchrun left them training)."""
    _die_with(os.getppid())


def _library_only_preparation(get):
    def prepare(name):
        data = get(name)
        for key in _MAIN_KEYS:
            data.pop(key, None)
        return data

    return prepare


class _WorkerMixin:
    """Records the starting process; in the child, watches it before running the target."""

    def start(self):
        self._starter_pid = os.getpid()
        with _launch_lock:
            get = mp_spawn.get_preparation_data
            mp_spawn.get_preparation_data = _library_only_preparation(get)
            try:
                super().start()
            finally:
                mp_spawn.get_preparation_data = get

    def run(self):
        starter = getattr(self, "_starter_pid", None)
        if starter is not None:
            _die_with(starter)
        super().run()


class ForkServerWorker(_WorkerMixin, mpc.ForkServerProcess):
    pass


class SpawnWorker(_WorkerMixin, mpc.SpawnProcess):
    pass


class _ForkServerContext(mpc.ForkServerContext):
    Process = ForkServerWorker


class _SpawnContext(mpc.SpawnContext):
    Process = SpawnWorker


def clean_context(preload: tuple[str, ...] = ()):
    """A multiprocessing context for DataLoader workers and process pools: workers start from a
    forkserver (``spawn`` where there is none), die with this process and never import the
    main script."""
    if "forkserver" not in mp.get_all_start_methods():
        return _SpawnContext()
    ctx = _ForkServerContext()
    # this module too, so that workers unpickle their process class without importing it
    ctx.set_forkserver_preload(list(dict.fromkeys((*preload, __name__))))  # ignored once running
    return ctx
