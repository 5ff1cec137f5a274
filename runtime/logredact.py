"""Credential values never reach a log: every log record is redacted as it is created."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

_redactors: list[Callable[[str], str]] = []
_installed = False


def _redact(text: str) -> str:
    for redact in list(_redactors):
        text = redact(text)
    return text


def add_log_redactor(redact: Callable[[str], str]) -> None:
    """Redact every log record, from any logger, with ``redact`` (until :func:`remove_log_redactor`)."""
    global _installed
    _redactors.append(redact)
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if not _redactors:
            return record
        message = record.getMessage()
        redacted = _redact(message)
        if redacted != message:  # leave other records as they are (some formatters read their args)
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            if _redact(text) != text:
                record.exc_text = _redact(text)  # formatters use exc_text when it is set
        return record

    logging.setLogRecordFactory(factory)


def remove_log_redactor(redact: Callable[[str], str]) -> None:
    """Stop using ``redact`` for log records."""
    if redact in _redactors:
        _redactors.remove(redact)
