"""Errors of `lm_eval`, kept free of `textebm` so that the package can be used on its own.

Every error here is the user's to fix (bad input, missing tools); its message is one line, which
the `textebm eval-ppl` command prints as is before exiting with status 2.
"""


class EvalError(Exception):
    """Base class: a problem with the input or the set-up, not a bug."""


class InputError(EvalError):
    """A text file that cannot be used (missing, empty, not UTF-8, a line too long, ...)."""


class KenLMToolsMissing(EvalError):
    """`lmplz`, `build_binary` or the `kenlm` module were not found; the message says how to install them."""


class EstimationError(EvalError):
    """`lmplz` or `build_binary` failed for a reason other than the counts needing a fallback."""
