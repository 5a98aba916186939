"""Errors a user can cause, reported as one line naming the file, row or key."""


class GenbrainInputError(ValueError):
    """Bad user input (config, table or image). ``str(err)`` is a one-line message that names
    the offending file/row/key and says what was expected; the workflow scripts print it
    without a traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
