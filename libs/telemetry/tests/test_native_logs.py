"""Native stderr lines as JSON records (libs.telemetry.native_logs.translate_line)."""

from __future__ import annotations

import logging

import pytest

from libs.telemetry.native_logs import translate_line

HANDSHAKE = (
    b"I0000 00:00:1796138367.715752   28144 ssl_transport_security.cc:1884] Handshake failed"
    b" with error SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:"
    b"PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate verification context"
)


def translated(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> tuple[list[bytes], list[logging.LogRecord]]:
    passed: list[bytes] = []
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        translate_line(raw, passed.append)
    return passed, list(caplog.records)


def test_a_refused_handshake_is_one_warning_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    passed, records = translated(HANDSHAKE, caplog)
    assert passed == []
    [record] = records
    assert (record.name, record.levelno, record.getMessage()) == (
        "emporium.tls",
        logging.WARNING,
        "tls handshake refused",
    )
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in record.__dict__["reason"]


def test_absl_lines_keep_their_level_and_json_passes_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = b"E0000 00:00:1796138367.1   1 chttp2_server.cc:10] bind failed"
    passed, [record] = translated(line, caplog)
    assert passed == []
    assert (record.name, record.levelno, record.getMessage()) == (
        "grpc.core",
        logging.ERROR,
        "bind failed",
    )
    json_line = b'{"level": "INFO", "message": "serving"}'
    passed, records = translated(json_line, caplog)
    assert (passed, records) == ([json_line], [])


def test_other_plain_text_becomes_a_record_and_absl_set_up_notes_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, [record] = translated(b"something a C library printed", caplog)
    assert (record.name, record.getMessage()) == ("grpc.core", "something a C library printed")
    note = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
    assert translated(note, caplog) == ([], [])
