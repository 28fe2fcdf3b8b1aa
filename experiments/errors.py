"""The one exception type for mistakes a user can fix (bad spec, bad table, bad path).

The CLI turns it into exit status 2 and one readable line; anything else is a bug and raises.
"""


class UserError(ValueError):
    """A problem in the user's input, with a message naming what is wrong and what is expected."""
