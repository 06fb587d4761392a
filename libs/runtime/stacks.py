"""Where a process is waiting: every thread's stack and every asyncio task's, printed on demand.

A service prints them to its log (stderr) on SIGUSR1 (`kill -USR1 <pid>`), and
`ServiceProcess.terminate` asks for them from a service that does not stop after SIGTERM; the
test runner prints them shortly before Bazel's timeout. A hang then names the line it waits on.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
import tempfile
from typing import Any, TextIO

HEADER = "==== where every thread and task waits ===="
FOOTER = "==== (end of where every thread and task waits) ===="


def print_stacks(file: TextIO, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Prints every thread's stack, then every task's of `loop` (by default the running one),
    in one write: the workers of a service share its stderr and print theirs at the same
    moment, and faulthandler's own output, a few bytes per write, interleaved mid-line."""
    with tempfile.TemporaryFile("w+") as threads:
        faulthandler.dump_traceback(threads, all_threads=True)
        threads.seek(0)
        lines = [HEADER, threads.read().rstrip("\n")]
    loop = loop or asyncio._get_running_loop()
    if loop is not None:
        lines.append("==== asyncio tasks ====")
        for task in asyncio.all_tasks(loop):
            lines.append(f"-- {task.get_name()}, awaiting (innermost last):")
            lines.extend(f"  {line}" for line in awaiting(task.get_coro()))
    lines.append(FOOTER)
    file.write("\n".join(lines) + "\n")
    file.flush()


def awaiting(coroutine: Any) -> list[str]:
    """The chain of awaits a suspended coroutine is in, outermost first, ending with what it
    waits on (asyncio's own task stack shows only the outermost frame)."""
    lines = []
    while coroutine is not None:
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "gi_frame", None)
        if frame is None:  # not a coroutine (a future, an awaitable object), or finished
            lines.append(repr(coroutine))
            break
        code = frame.f_code
        lines.append(f'File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
    return lines


def print_stacks_on_sigusr1() -> None:
    """From now on, SIGUSR1 prints the stacks to stderr (call it inside the running loop)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, print_stacks, sys.stderr, loop)
