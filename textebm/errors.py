"""Errors that are the user's to fix: the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input (a missing file, an unknown option value, a damaged run folder, ...)."""


class NonFiniteError(RuntimeError):
    """A Langevin chain or an energy produced NaN or infinity."""
