"""The one exception type for mistakes a user can fix (bad config, data or model choice).

Recipes catch it and print a one-line message with a non-zero exit; anything else is a bug and keeps
its traceback.
"""


class UsageError(ValueError):
    """A problem in the user's input; the message names the problem and the fix."""


class NonFiniteLossError(UsageError):
    """The loss became NaN or infinite; raised instead of silently training on it."""
