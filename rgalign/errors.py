"""One exception type per kind of failure. The CLI prints ``str(error)`` as one line and exits
non-zero; ``--verbose`` adds the traceback. Messages say what is wrong *and* what to do."""


class RgalignError(Exception):
    """Base class of every error rgalign raises on purpose."""

    exit_code = 1


class DataError(RgalignError):
    """A dataset (or a request's features) does not match the SPEC §1 format."""

    exit_code = 2


class ConfigError(RgalignError):
    """A configuration, option or backbone is unusable."""

    exit_code = 2


class TrainError(RgalignError):
    """Training could not run or resume."""


class ExportError(RgalignError):
    """An exported artifact failed its gate, or export could not run."""


class ServeError(RgalignError):
    """The Triton server or a request to it failed."""


class RequestError(RgalignError):
    """One request cannot be served as sent (malformed JSON, a missing or mistyped feature, a
    value out of range, over a size limit): answered with its own ``INVALID_ARG`` (HTTP 400,
    gRPC INVALID_ARGUMENT) and a one-line reason; requests batched with it are unaffected."""

    exit_code = 2
