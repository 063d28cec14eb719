"""Errors the command line shows as one paragraph, without a traceback."""


class UserError(Exception):
    """A problem with what the user asked for (a file, a flag, a pattern): exit code 1."""
