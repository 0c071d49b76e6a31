"""User-facing errors: the CLI prints them as one line and exits 2, without a traceback."""


class UserError(Exception):
    """Bad input a user can fix (file, field, option). The message names what and how."""

    exit_code = 2
