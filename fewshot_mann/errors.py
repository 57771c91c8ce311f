"""The project's own error type: a problem the user can fix, reported in one line."""


class UserError(Exception):
    """Bad input (data, options, checkpoint). The CLI prints it and exits 2, no traceback."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, corrupt, foreign or from an unknown version."""


class DataError(UserError):
    """Missing, unreadable or insufficient data."""
