"""The one exception type for mistakes a user can fix: a bad spec, table, path or storage.

Its message names what is wrong and what is expected; the CLI prints it as one line and exits
with status 2. Anything else is a bug and raises with its traceback. Every layer may import
this module (it is part of the shared contract, with ``analysis.records`` and ``analysis.store``).
"""


class UserError(ValueError):
    """A problem in the user's input, with a message naming what is wrong and what is expected."""
