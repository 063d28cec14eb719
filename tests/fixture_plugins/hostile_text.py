"""Implementations whose every text is terminal escapes: description, Unsupported reason, stderr before a crash.

Loaded via ATTNBENCH_PLUGIN_MODULES. Printed raw, ESCAPES would clear the
screen, set the window title, plant an OSC 8 link and recolour through C1's
CSI; every printer must show them as (stripped) text.
"""

import os
import sys

from attnbench import Implementation, Unsupported, hookimpl

ESCAPES = "\x1b[2J\x1b[H\x1b]0;owned\x07\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\\x9b31mred\x7f"
MARK = "hostile-text"
"""Plain words beside the escapes, to find where the text ended up."""


def unsupported(case):
    raise Unsupported(f"{MARK} reason {ESCAPES}")


def crashes(case):
    def call(q, k, v):
        sys.stderr.write(f"{MARK} stderr {ESCAPES}\n")
        sys.stderr.flush()
        os._exit(3)
    return call


@hookimpl
def attnbench_implementations():
    return [
        Implementation(name="hostile.unsupported", build=unsupported, description=f"{MARK} description {ESCAPES}"),
        Implementation(name="hostile.crash", build=crashes, description=f"{MARK} crash {ESCAPES}"),
    ]
