"""Where a process waits, printed whole: the workers of a service share one stderr and are asked
at the same moment (SIGUSR1 to their supervisor), so each report must be a single write."""

from __future__ import annotations

import asyncio
import io

from libs.runtime.stacks import FOOTER, HEADER, print_stacks


class Writes(io.StringIO):
    """A text file that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def waiting_forever(event: asyncio.Event) -> None:
    await event.wait()


def test_the_report_is_one_write_with_every_thread_and_task() -> None:
    async def report() -> Writes:
        never = asyncio.Event()
        task = asyncio.create_task(waiting_forever(never), name="the-waiter")
        await asyncio.sleep(0)
        file = Writes()
        print_stacks(file)
        task.cancel()
        return file

    file = asyncio.run(report())
    assert len(file.writes) == 1
    text = file.writes[0]
    assert text.startswith(HEADER + "\n") and text.endswith(FOOTER + "\n")
    assert "Current thread" in text  # faulthandler's part: this thread's stack
    assert "-- the-waiter, awaiting (innermost last):" in text
    assert "in waiting_forever" in text
