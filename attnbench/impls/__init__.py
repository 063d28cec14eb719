"""Built-in implementations: each module is a plugin registered like any third-party one."""
