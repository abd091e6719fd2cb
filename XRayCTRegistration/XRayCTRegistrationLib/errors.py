"""Errors raised for bad input.

Every error names the file or argument and the problem in one line, so the CLI can print it
as it is and exit with status 2.
"""


class InputError(ValueError):
    """Bad user input: unreadable file, wrong dimensionality, missing geometry, NaN, ..."""
