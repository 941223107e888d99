"""Log records as JSON lines, for log pipelines that parse fields rather than text.

A record whose arguments are one mapping (the access log's: `log.info(FORMAT, fields)`)
has those fields as keys of its own instead of a rendered message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, pid, and msg or the record's own
    fields; exc (the traceback as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        if isinstance(record.args, Mapping):
            # The fields say it all; the text rendering of them would double the line.
            for key, value in record.args.items():
                doc.setdefault(str(key), value)
        else:
            doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))
