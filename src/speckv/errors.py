"""One exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class SpeckvError(Exception):
    """A problem the user can fix (bad input, missing model, corrupt cache)."""
