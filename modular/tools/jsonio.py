"""Records as files other tools can read: strict JSON (null where a value is NaN or infinite, for which
JSON has no word; Python's default writes a bare ``NaN`` that other parsers reject) and no absolute
path of the machine that wrote them (a path is reduced to its last part: the run folder's name, the
data folder's name, ``checkpoint.pt``). Every record the project writes goes through ``write_record``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

# An absolute POSIX path (not one that continues a word, a relative path or ~/...) or a Windows one;
# it ends at whitespace, a quote, a bracket or punctuation (a log line says "data: /tmp/x: 50,000 ...").
_ENDS = r"\s'\"(),;:"
ABSOLUTE_PATH = re.compile(rf"(?<![\w.~/\\-])(?:/[^{_ENDS}/]+)+/?|(?<![\w])[A-Za-z]:\\(?:[^{_ENDS}\\]+\\?)+")


def portable(text: str) -> str:
    """``text`` with every absolute path in it reduced to its last part:
    "/root/runs/seed0/checkpoint.pt" -> "checkpoint.pt", "data: /tmp/cifar10-official: ..." -> "data: cifar10-official: ..."."""
    return ABSOLUTE_PATH.sub(lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1], text)


def for_the_record(value: Any) -> Any:
    """``value`` (a record: dicts, lists, numbers, strings) as it is written: NaN and infinities become
    None, strings lose their absolute paths (``portable``), tuples become lists."""
    if isinstance(value, dict):
        return {key: for_the_record(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [for_the_record(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return portable(value)
    return value


def dumps(record: dict) -> str:
    """The text of a record file: ``for_the_record``, indented by one space, strict JSON."""
    return json.dumps(for_the_record(record), indent=1, allow_nan=False)


def write_record(path: str | os.PathLike, record: dict) -> dict:
    """Write ``record`` to ``path`` as ``dumps`` gives it; returns what was written, as a dict."""
    text = dumps(record)
    Path(path).write_text(text)
    return json.loads(text)


def portable_file_text(path: str | os.PathLike) -> str:
    """The text of a record (.json) or log (any other file) as ``make_portable`` would leave it."""
    path = Path(path)
    text = path.read_text()
    return dumps(json.loads(text)) if path.suffix == ".json" else portable(text)


def make_portable(path: str | os.PathLike) -> bool:
    """Rewrite a committed record or log in place without absolute paths (and, in a record, without
    NaN); every other byte stays. Returns whether the file changed."""
    after = portable_file_text(path)
    changed = after != Path(path).read_text()
    if changed:
        Path(path).write_text(after)
    return changed
