"""The reader's worker threads: a fixed set of daemon threads that run the tasks a
call posts (run_call and run_task in _engine_calls.pxi collect them, interrupt-safe).

Worker threads never receive KeyboardInterrupt (Python runs signal handlers in the
main thread only), so what a task does in Python (open, read, close) is never split
by one; the calling thread only posts and collects, in compiled code.
"""
import queue
import signal
import threading

from ._engine import run_task

__all__ = ["Workers", "block_async_signals"]


class Workers:
    """`n` threads serving one task queue. post(task) queues (index, fn, resources,
    stop, results) for run_task; close() ends and joins the threads."""

    def __init__(self, n, name):
        self._tasks = queue.SimpleQueue()
        self._closed = False
        self._threads = []
        for k in range(n):
            t = threading.Thread(target=_serve, args=(self._tasks,), name=f"{name}-{k}",
                                 daemon=True)   # an unclosed reader never blocks exit
            t.start()
            self._threads.append(t)

    def __len__(self):
        return len(self._threads)

    def post(self, task):
        if self._closed:        # no thread would ever run it
            raise RuntimeError("the reader was closed while this call was starting")
        self._tasks.put(task)

    def forget(self):
        """In a forked child, where its threads do not exist: closed, without
        waiting for them."""
        self._closed = True

    def close(self):
        self._closed = True
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()


# Signals that report a fault in the thread itself: never blocked.
_SYNCHRONOUS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT,
                signal.SIGTRAP, signal.SIGSYS}


def block_async_signals():
    """In a helper thread: process-wide signals (Ctrl-C, timers) go to a thread that
    does not block them; let that be the main thread, whose waits they must
    interrupt to run handlers."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)


def _serve(tasks):
    block_async_signals()
    while True:
        task = tasks.get()
        if task is None:
            return
        run_task(*task)
        del task                # the call's results are the caller's, not ours
