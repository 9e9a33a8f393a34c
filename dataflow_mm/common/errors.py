"""Error types.

Two families, because they are handled differently:

* ``UserError``: a run-level problem (input file missing, cache not writable, model not
  loadable, keys that do not match). The CLI prints its message and exits non-zero, no traceback.
* ``RowError``: a problem with one row (missing image, bad box, failed request). The row keeps
  its place and its ``error`` field holds ``"<ErrorClass>: <message>"`` (see ``row_error_text``).
"""

from __future__ import annotations

ERROR_COLUMN = "error"


class DataflowMMError(Exception):
    """Base class of every error raised on purpose by dataflow-mm."""


class UserError(DataflowMMError):
    """A run-level problem the user can fix; reported without a traceback."""


class ConfigError(UserError, ValueError):
    """A config or operator argument outside its allowed values (raised when the object is built).

    Also a ``ValueError``, so callers that guarded construction with ``except ValueError`` still work.
    """


class MissingDependencyError(UserError):
    """An optional dependency is not installed; the message holds the exact pip line."""


class ModelNotAvailableError(UserError):
    """A model cannot be found locally and cannot be downloaded (offline or unknown id)."""


class PipelineCompileError(UserError):
    """Operator input keys that do not exist at the step where the operator runs."""


class UnsupportedArgumentError(UserError):
    """An argument DataFlow-MM accepts for something dataflow-mm does not do (video, audio, image output)."""


class StorageError(UserError):
    """The input table or the cache folder cannot be read or written."""


class RowError(DataflowMMError):
    """A problem confined to one row; the row is kept with an error field."""


class ImageLoadError(RowError):
    """An image could not be read."""


class ImageNotFoundError(ImageLoadError):
    """The image path does not exist (or is not a file)."""


class ImageDecodeError(ImageLoadError):
    """The file exists but is not a decodable image (empty, truncated, not an image)."""


class ImageTooLargeError(ImageLoadError):
    """The image declares more pixels than allowed (decompression-bomb guard)."""


class InvalidBoxError(RowError):
    """A bounding box is malformed or lies outside the image."""


class StructuredAnswerError(RowError):
    """A structured (JSON) answer is cut off at the token limit or is not the JSON asked for: no captions."""


class ServingError(RowError):
    """The model backend failed for this request (after any retries)."""


class PromptTooLongError(RowError):
    """The request cannot fit the model's context window."""


def row_error_text(error: BaseException) -> str:
    """The text stored in a row's ``error`` field: ``"<ErrorClass>: <message>"``."""
    return f"{type(error).__name__}: {error}"


def is_row_error(value: object) -> bool:
    """True when an ``error`` field holds an error: only a non-empty string does ("", false, 0, [] do not)."""
    return isinstance(value, str) and value != ""


def error_class_of(text: str | None) -> str | None:
    """The error class name of an ``error`` field value, or None for a row without error."""
    if not text or not isinstance(text, str):
        return None
    return text.split(":", 1)[0].strip()


class MissingFieldError(RowError):
    """A field the operator needs is absent or empty in this row."""


class ImageDownloadError(ImageLoadError):
    """An ``http(s)://`` image could not be downloaded (HTTP error, timeout, over the size cap)."""


# -- Row outcomes and run outcomes -------------------------------------------------------------
# A row of a step is *done* (no error), *failed* (a permanent row error: a broken image, an invalid
# box, a request the server refuses as wrong) or *pending* (a transient error: the row was not answered
# now but may be on a rerun). Pending rows are not results: a step holding one is not complete.

ROW_DONE = "done"
ROW_FAILED = "failed"
ROW_PENDING = "pending"

EXIT_COMPLETE = 0  # every row of every step done or permanently failed
EXIT_BUG = 1  # an unexpected exception (a traceback)
EXIT_USAGE = 2  # usage or configuration error: one line on stderr
EXIT_INCOMPLETE = 3  # rows pending or the run stopped early: rerun the same command to continue


class TransientRowError(RowError):
    """A row that could not be processed now but may be later: it stays *pending* and a rerun redoes it."""


class ServingUnavailableError(ServingError, TransientRowError):
    """The backend did not answer this request (connection refused or reset, timeout, 408/429/5xx after
    the retries, a vLLM output that finished with ``error`` or ``abort``, an engine that died)."""


class RowNotReadyError(TransientRowError):
    """A row an earlier step left pending: this step did not process it and it stays pending."""


class ServingConfigError(UserError):
    """Every request would fail the same way (401/403, the model does not exist, a refused parameter):
    the run stops after the first few requests with the server's message (exit 2)."""


class RunStoppedError(DataflowMMError):
    """The run stopped early (e.g. the server stopped answering): rows not processed stay pending and
    the process exits ``EXIT_INCOMPLETE``; rerunning the same command continues."""


class ImageUnavailableError(ImageDownloadError, TransientRowError):
    """An ``http(s)://`` image whose server did not answer (connection refused or reset, timeout,
    408/429/5xx after the retries): the row stays pending and a rerun downloads it again."""


PENDING_ERROR_CLASSES = frozenset(
    {"ServingUnavailableError", "RowNotReadyError", "TransientRowError", "ImageUnavailableError"}
)


def row_outcome(error: object) -> str:
    """``ROW_DONE``, ``ROW_FAILED`` or ``ROW_PENDING`` for a row's ``error`` field value."""
    if not is_row_error(error):
        return ROW_DONE
    return ROW_PENDING if error_class_of(error) in PENDING_ERROR_CLASSES else ROW_FAILED  # type: ignore[arg-type]
