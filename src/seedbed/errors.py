"""One exception type for every mistake a user can fix.

The CLI turns a `SeedbedError` into a single line on stderr and exit code 2;
anything else is a bug in seedbed and keeps its traceback.
"""


class SeedbedError(Exception):
    """A problem with the user's input, stated with its fix in one line."""
