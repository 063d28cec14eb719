"""Lets the tests run from a checkout before the package is installed (``pip install -e .`` works too)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
