"""User-facing errors.

A ``UserError`` is bad input (a missing file, a wrong column, a bad config
combination): the CLI prints its message as one line and exits non-zero, with
no traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: one line saying what, where, and how to fix it."""

    exit_code = 1
    # In a multirun (-m) a failed job is recorded as failed and the sweep goes on; an error that
    # sets this (Ctrl-C) ends the whole sweep instead.
    stops_sweep = False
