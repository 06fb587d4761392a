"""Native code's stderr as JSON lines: gRPC's C core writes plain text to file descriptor 2
(absl's `I0000 00:00:… file.cc:123] message`), beside the services' JSON logs.

`capture_native_stderr` points fd 2 at a pipe and gives Python its own descriptor for the real
stderr, so Python's output (the JSON handler, tracebacks) bypasses the pipe. A daemon thread
reads the pipe: JSON lines (a worker process inherits fd 2) pass through as they are; an absl line
becomes one JSON record of the `grpc.core` logger at its level; a refused TLS handshake becomes
one WARNING `tls handshake refused` with the reason, so an operator can count them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("grpc.core")
tls_log = logging.getLogger("emporium.tls")

_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]]+)\] (.*)$")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_HANDSHAKE_FAILED = "Handshake failed"
# absl's notes about its own set-up say nothing about the service.
_SET_UP_NOTES = ("WARNING: All log messages before absl::InitializeLog()", "Log level INFO is not")


def capture_native_stderr() -> int:
    """Routes fd 2 through the translating thread; returns the descriptor of the real stderr,
    which Python's own writers must use from now on (sys.stderr is rebound to it)."""
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(real_stderr, "w", buffering=1, closefd=False)  # noqa: SIM115 (process-long)
    passthrough = _writer(real_stderr)
    threading.Thread(
        target=_translate, args=(read_end, passthrough), name="native-stderr", daemon=True
    ).start()
    return real_stderr


def _writer(fd: int) -> Callable[[bytes], None]:
    def write(line: bytes) -> None:
        os.write(fd, line + b"\n")

    return write


def _translate(read_end: int, passthrough: Callable[[bytes], None]) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            translate_line(line, passthrough)
    if pending:
        translate_line(pending, passthrough)


def translate_line(raw: bytes, passthrough: Callable[[bytes], None]) -> None:
    """One line from fd 2: JSON as it is, absl's format as a record, anything else as an
    INFO record of `grpc.core` (nothing reaches stderr as plain text)."""
    line = raw.decode(errors="replace").rstrip("\r")
    if not line.strip():
        return
    if line.startswith("{"):
        passthrough(raw)
        return
    if line.startswith(_SET_UP_NOTES):
        return
    parsed = _ABSL_LINE.match(line)
    if parsed is None:
        log.info(line)
        return
    level, source, message = parsed.groups()
    if message.startswith(_SET_UP_NOTES):
        return
    if message.startswith(_HANDSHAKE_FAILED):
        # The client gets no gRPC status (it never reached the server); this line is the record.
        tls_log.warning("tls handshake refused", extra={"reason": message, "source": source})
        return
    log.log(_LEVELS[level], message, extra={"source": source})
