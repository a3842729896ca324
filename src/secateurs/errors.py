"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class SecateursError(Exception):
    """A problem with the user's input or environment, explained in plain words.

    Raise it with a message that names the problem and, where possible, the fix. The CLI prints
    ``error: <message>`` and exits with status 2 instead of showing a traceback.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, Kubernetes, ``docker stop``), handled like Ctrl-C: temporary files
    are removed on the way out."""
