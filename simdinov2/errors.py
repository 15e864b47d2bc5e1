"""User errors: problems the user must fix, reported as one line (no traceback)."""


class UserError(Exception):
    """A problem with the user's input that the program knows the cause and fix of."""
