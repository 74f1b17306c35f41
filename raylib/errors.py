"""The one exception type that means "the user gave us something we cannot use"."""


class UserError(Exception):
    """Bad arguments or unreadable input: reported as one line and a non-zero exit."""
