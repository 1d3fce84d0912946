"""User-facing errors: the CLI prints ``error: <message>`` (one line, no traceback) and exits non-zero."""


class DilFastError(Exception):
    """Base class of errors caused by user input (files, flags, checkpoints)."""

    exit_code = 2


class InputError(DilFastError):
    """A file or folder given by the user is missing, unreadable or unsuitable; names the path."""


class FlagError(DilFastError):
    """A command-line flag has an invalid value; names the flag."""


class CheckpointError(DilFastError):
    """A checkpoint is not one of ours / the reference's, or does not fit the model."""


class SamplesUnavailable(InputError):
    """The built-in sample images (``--testset default``, the demo) are not installed: scikit-image,
    which ships them, is missing or incomplete. The message says how to install them."""


class TrainingStopped(DilFastError):
    """The run stopped itself: non-finite steps past ``--max_bad_steps``, or non-finite weights that
    would have gone into a checkpoint (the last good checkpoint is kept)."""

    exit_code = 3
