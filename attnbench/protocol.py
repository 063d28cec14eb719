"""The runner-worker protocol: one JSON line per request, one per reply, and what a reply must be.

Every request carries a fresh random ``id`` and names its pair (``impl`` and
``case``, or ``task`` for a quality task); the worker echoes all three. The
parent takes a line as the answer only if it parses, echoes the request it
answers, and has the shape of a reply: a known status, a text reason, finite
numbers where numbers belong. Anything else -- a line a plugin wrote onto the
pipe, garbage, a reply to another request, a second reply -- is a protocol
violation: that pair is ``crashed`` and its worker is replaced, so no forged
line can become a record or shift the next pair's.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

REPLY_STATUSES = ("ok", "incorrect", "unsupported", "error", "oom")
"""What a worker may say of a pair; the rest (timeout, crashed, skipped, preempted...) only the parent decides."""
ECHOED = ("id", "impl", "case", "task")
"""Request fields a reply repeats, so the parent can tell which request a line answers."""
MAX_REPLY_BYTES = 64 << 20
"""A reply longer than this is garbage, not a measurement (a real one is a few kilobytes)."""


class ProtocolViolation(Exception):
    """A line on the reply pipe that is not the answer to the request in flight."""


def new_request(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with a fresh id: 128 random bits, so a line written ahead of time cannot match it."""
    return {**request, "id": secrets.token_hex(16)}


def echo(request: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``request`` its reply must carry back."""
    return {k: request[k] for k in ECHOED if k in request}


def parse_reply(line: bytes, request: dict[str, Any]) -> dict[str, Any]:
    """The reply ``line`` holds for ``request``; raises ProtocolViolation saying what is wrong."""
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolViolation(f"unreadable reply line {_preview(line)}") from None
    if not isinstance(reply, dict):
        raise ProtocolViolation(f"reply is a {type(reply).__name__}, not an object")
    for key in ECHOED:
        if key in request and reply.get(key) != request[key]:
            raise ProtocolViolation(f"reply does not answer this request ({key} differs)")
    problem = reply_problem(reply)
    if problem:
        raise ProtocolViolation(problem)
    return reply


def reply_problem(reply: dict[str, Any]) -> str | None:
    """Why ``reply`` is not a well-formed reply, or None."""
    status = reply.get("status")
    if status not in REPLY_STATUSES:
        return f"unknown status {_preview(status)}"
    if not isinstance(reply.get("reason", ""), str):
        return "reason is not a string"
    if not isinstance(reply.get("metrics", {}), dict):
        return "metrics is not an object"
    for key, value in reply.get("metrics", {}).items():
        problem = _value_problem(value)
        if problem:
            return f"metrics.{key}: {problem}"
    samples = reply.get("samples_ms", [])
    if not isinstance(samples, list) or not all(_is_number(s) and math.isfinite(s) and s >= 0 for s in samples):
        return "samples_ms must be a list of finite numbers >= 0"
    for key in ("result", "kernel_rel_err", "wall_s", "telemetry"):
        if key in reply:
            problem = _value_problem(reply[key])
            if problem:
                return f"{key}: {problem}"
    return None


def _value_problem(value: Any, depth: int = 0) -> str | None:
    """Metric values are finite numbers >= 0, strings, booleans, null, or lists and objects of them, shallowly nested."""
    if depth > 4:
        return "nested too deeply"
    if value is None or isinstance(value, (str, bool)):
        return None
    if _is_number(value):
        # Every figure a worker reports is a size, a count, a time or an error: never negative.
        return None if math.isfinite(value) and value >= 0 else f"expected a finite number >= 0, got {value}"
    if isinstance(value, list):
        return next((p for p in (_value_problem(v, depth + 1) for v in value) if p), None)
    if isinstance(value, dict):
        return next((f"{k}: {p}" for k, v in value.items() if (p := _value_problem(v, depth + 1))), None)
    return f"unexpected {type(value).__name__}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _preview(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return repr(text[:80]) + ("..." if len(text) > 80 else "")
