"""Shared fixtures: loading the test-only plugins in tests/fixture_plugins, in this process and in workers."""

import os
from pathlib import Path

import pytest

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"


@pytest.fixture
def fixture_plugins(monkeypatch):
    """Call with comma-separated module names: they load as plugins here and in every worker; returns the env."""

    def load(modules: str) -> dict:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FIXTURE_PLUGINS), os.environ.get("PYTHONPATH", "")]))
        monkeypatch.setenv("ATTNBENCH_PLUGIN_MODULES", modules)
        monkeypatch.syspath_prepend(str(FIXTURE_PLUGINS))
        return dict(os.environ)

    return load
