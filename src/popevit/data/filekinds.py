"""What kind of file a path under a data folder is, and why a file that is not used is left out.

:func:`classify_file` tells image candidates (by extension *or* magic bytes) from everything else: hidden files,
DICOM, NIfTI and JPEG 2000 files (read by ``popevit predict``, not for training) and files that are not images.
:mod:`popevit.data.discover` walks the folders and records these reasons; :mod:`popevit.data.checks` groups them.
"""

from __future__ import annotations

from pathlib import Path

from popevit.data.decode import IMAGE_EXTENSIONS, looks_like, sniff_format

# Why a file is not used (popevit.data.checks groups equal reasons). Each says what to do about it.
ROOT_IMAGE = "image at the data root, outside any class folder: move it into <root>/<class>/ to use it"
NOT_IMAGE = "not an image file (by name and content)"
HIDDEN = "hidden file"
HIDDEN_DIR = "hidden folder"
RESERVED = "reserved folder (phantom lesion masks), never a class"
SPECIAL = "not a regular file (FIFO, socket or device): only regular files are read"
BROKEN_LINK = "broken symbolic link: its target does not exist"
LINK_LOOP = "symbolic link back to a folder that contains it (a loop): not followed"
LINK_INSIDE = "symbolic link to another folder of the data root: not followed, its images would count twice"
FORMATS = {
    "DICOM": "DICOM: not read for training; convert it to PNG (e.g. pydicom), or use `popevit predict` on it",
    "NIfTI": "NIfTI volume: not read for training; export its slices to PNG, or use `popevit predict` on it",
    "JPEG 2000": "JPEG 2000: not read for training; convert it to PNG",
}
_FORMAT_EXTENSIONS = {".dcm": "DICOM", ".dicom": "DICOM", ".nii": "NIfTI", ".nii.gz": "NIfTI", ".jp2": "JPEG 2000",
                      ".j2k": "JPEG 2000", ".jpx": "JPEG 2000", ".jpf": "JPEG 2000"}  # fmt: skip


def is_hidden(name: str) -> bool:
    """Hidden files and folders (``.x``, macOS ``__MACOSX``) are never data."""
    return name.startswith(".") or name.startswith("__MACOSX")


def _special_format(path: Path, head: bytes) -> str | None:
    """``DICOM``, ``NIfTI`` or ``JPEG 2000`` by extension or content, else None."""
    name = path.name.lower()
    for ext, kind in _FORMAT_EXTENSIONS.items():
        if name.endswith(ext):
            return kind
    kind = looks_like(head)
    return kind if kind in FORMATS else None


def classify_file(path: Path) -> str | None:
    """None when ``path`` (a regular file) is an image candidate, else why it is not used (a module reason)."""
    if is_hidden(path.name):
        return HIDDEN
    head = b""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        pass  # unreadable: an image candidate by name is listed by the decoder with its reason
    kind = _special_format(path, head)
    if kind is not None:
        return FORMATS[kind]
    if path.suffix.lower() in IMAGE_EXTENSIONS or sniff_format(head[:16]) is not None:
        return None
    return NOT_IMAGE


def is_image_file(path: Path) -> bool:
    """Image candidate: an image extension or image magic bytes (hidden files such as ``._x.jpg`` never are)."""
    return Path(path).is_file() and classify_file(Path(path)) is None
