"""The one exception type a user sees: a mistake they can mend, said in one message.

It lives in models/ because every layer (models, pipeline, workflows) raises it and arrows
only point down.
"""


class CapfiltError(Exception):
    """Bad config, path, checkpoint or input: the message says what is wrong and how to mend it."""
