"""Where the files to score come from: a ``SourceItem`` is a name and a function that returns the
bytes, so the batch runner (``pneumo_model.batch``) and the PACS workflow
(``pneumo_model.pacs_workflow``, one item per instance) share one shape without importing each
other. Reasons a file cannot be read name no path: paths in an archive can carry patient numbers.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BatchError, InvalidImageError
from .preprocessing import ImageLimits, _too_big_message


@dataclass(frozen=True)
class SourceItem:
    """One file to score.

    Attributes:
        name: what RESULTS' ``file`` column holds (a resolved path for files on disk); the key
            a rerun skips by, with the bytes' SHA-256.
        read: returns the file's bytes; raises ``InvalidImageError`` with a plain reason (missing,
            unreadable, too large) that names no path.
        path: where Ray can read the file (a local path or an object-store URI); None for an item
            only this process can fetch.
    """

    name: str
    read: Callable[[], bytes]
    path: str | None = None


def read_file(path: str | Path, limits: ImageLimits = ImageLimits()) -> bytes:
    """A file's bytes, within ``limits.max_bytes``; the reasons it cannot be read name no path.

    Raises:
        InvalidImageError: missing, a folder, unreadable or too large.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise InvalidImageError("This is a folder, not an image file.")
        if size > limits.max_bytes:
            raise InvalidImageError(_too_big_message(size, limits))  # refused unread
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidImageError("The file does not exist (moved or deleted since it was listed).") from None
    except PermissionError:
        raise InvalidImageError("The file cannot be read: permission denied.") from None
    except OSError as error:
        raise InvalidImageError(f"The file cannot be read ({error.strerror or type(error).__name__}).") from None
    return data  # an empty file is refused by the decoder, with its SHA-256 known


def _file_item(path: Path, limits: ImageLimits) -> SourceItem:
    resolved = str(path.resolve())
    return SourceItem(resolved, lambda: read_file(resolved, limits), resolved)


def folder_items(folder: Path, limits: ImageLimits = ImageLimits()) -> list[SourceItem]:
    """Every file under ``folder`` (recursively, in path order), hidden files and folders (a name
    starting with ".") left out.

    Raises:
        BatchError: the folder holds no file.
    """
    folder = Path(folder)
    files = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not files:
        raise BatchError("The SOURCE folder holds no file to score. Check the folder, or give a text file of paths.")
    return [_file_item(path, limits) for path in files]


def list_items(text_file: Path, limits: ImageLimits = ImageLimits()) -> list[SourceItem]:
    """The files named in a text file, one path per line (relative ones to the file's folder);
    blank lines and lines starting with "#" are skipped. A path that does not exist is still an
    item: its row says so.

    Raises:
        BatchError: the text file is not readable text or names no file.
    """
    text_file = Path(text_file)
    try:
        lines = text_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BatchError(
            "SOURCE is a file but not a text file of paths (one per line). Give a folder or a text file of paths."
        ) from None
    except OSError as error:
        raise BatchError(f"The SOURCE list cannot be read ({error.strerror}).") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise BatchError("The SOURCE list names no file. Put one path per line.")
    seen, items = set(), []
    for name in names:
        path = Path(name) if Path(name).is_absolute() else text_file.parent / name
        item = _file_item(path, limits)
        if item.name not in seen:  # a file listed twice is one file: one row
            seen.add(item.name)
            items.append(item)
    return items


def unexpected_reason(error: BaseException) -> str:
    """The ``error`` of a file that broke the decoder in a way the package does not foresee: a row,
    so that one odd file cannot stop an archive; the traceback goes to stderr (it names no file)."""
    traceback.print_exception(error, file=sys.stderr)
    return f"Unexpected error while decoding ({type(error).__name__}: {error}). Report it with the file's SHA-256."
