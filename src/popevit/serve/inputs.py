"""What a colleague has on disk -> 2-D slices for the model: images, DICOM files and series, NIfTI volumes.

Every input becomes zero or more :class:`Slice` objects (a decoded 2-D PIL image plus where it came from) or one
:class:`Failure` (the file and a one-line reason with the fix). Nothing here resizes, crops or normalises: each slice
then goes through the run's own :func:`popevit.data.preprocess.preprocess_image`, the function that made every
training and evaluation input. Torch is never imported (the ONNX path runs without it).

- **Images** (PNG, JPEG, TIFF, BMP, ... any mode, 8 or 16 bit) are decoded as the training cache decodes them
  (:func:`popevit.data.preprocess.decode_for_model`, format from content).
- **DICOM** (pydicom): the Modality LUT (RescaleSlope/Intercept) and then the VOI LUT or window from the tags
  (WindowCenter/Width; per frame for enhanced multi-frame files) are applied, as a viewer would show the slice; a
  slice without a window keeps its modality values, and the training percentile clip does the windowing.
  MONOCHROME1 (minimum = white) is inverted. Multi-frame files give one slice per frame; the files of one series
  (SeriesInstanceUID) are grouped and ordered along the slice normal (ImagePositionPatient), else by InstanceNumber.
- **NIfTI** (nibabel, ``.nii``/``.nii.gz``): reoriented to the closest canonical (RAS+) orientation, then cut into
  axial slices shown as a radiologist reads them (anterior up, the patient's right on the image's left).

Non-square pixels (PixelSpacing, NIfTI zooms) are resampled to square ones, since the training JPEGs had square
pixels. ``slices`` selects the slices of every volume (NIfTI, multi-frame DICOM, DICOM series): ``all``, ``middle``
or ``A:B`` (Python slice semantics, B excluded, either end optional).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from popevit.config import PreprocessConfig
from popevit.data.decode import IMAGE_EXTENSIONS, DecodeError, read_bytes, sniff_format
from popevit.data.discover import RESERVED_DIRS

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".ima"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
Kind = Literal["image", "dicom", "nifti"]


@dataclass
class Slice:
    """One 2-D image to classify.

    Attributes:
        id: unique name of the slice: the file path, with ``#frame=i`` (multi-frame DICOM) or ``#z=k`` (NIfTI).
        path: the file it came from.
        image: the decoded slice (PIL mode L, I;16, RGB, F, ...), ready for ``preprocess_image``.
        kind: ``image``, ``dicom`` or ``nifti``.
        volume: the volume it belongs to (NIfTI file, DICOM series UID or multi-frame file); None for 2-D images.
        index: its position in the volume (0-based, in the volume's slice order); None for 2-D images.
        n_slices: slices in the whole volume (before ``slices`` selected some).
        window: DICOM only: ``"tags"`` when a VOI LUT or window from the file was applied, else ``"percentile"``.
    """

    id: str
    path: str
    image: Image.Image
    kind: Kind
    volume: str | None = None
    index: int | None = None
    n_slices: int | None = None
    window: str | None = None


@dataclass
class Failure:
    """An input that gives no slice: ``reason`` names the problem and the fix in one line."""

    path: str
    reason: str


@dataclass
class Skipped:
    """A file met while walking a folder that is not an image, DICOM or NIfTI file (listed, never silently lost)."""

    path: str
    reason: str


class InputError(Exception):
    """A file that cannot be read as model input; the message is the one-line reason."""


# ------------------------------------------------------------------------------------------------ slice selection


def parse_slices(spec: str) -> tuple[str, int | None, int | None]:
    """``all``, ``middle`` or ``A:B`` -> ``(mode, start, stop)``.

    Raises:
        ValueError: any other text.
    """
    spec = spec.strip()
    if spec in ("all", "middle"):
        return spec, None, None
    if spec.count(":") == 1:
        a, b = spec.split(":")
        try:
            return "range", (int(a) if a.strip() else None), (int(b) if b.strip() else None)
        except ValueError:
            pass
    raise ValueError(f"--slices {spec!r} is not understood; use all, middle or A:B (e.g. 10:20, B excluded)")


def select_slices(n: int, spec: str) -> list[int]:
    """Indices of the slices of an ``n``-slice volume that ``spec`` (see :func:`parse_slices`) selects."""
    mode, a, b = parse_slices(spec)
    if mode == "all":
        return list(range(n))
    if mode == "middle":
        return [n // 2] if n else []
    return list(range(n))[slice(a, b)]


# ------------------------------------------------------------------------------------------------ detection


def _head(path: Path, n: int = 352) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_nifti(path: Path) -> bool:
    """``.nii``/``.nii.gz`` by name, or the NIfTI-1/2 magic of an uncompressed file."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return True
    try:
        head = _head(path, 352)
    except OSError:
        return False
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00"


def is_dicom(path: Path) -> bool:
    """The ``DICM`` marker after the 128-byte preamble, or a DICOM extension (files without a preamble)."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        return _head(path, 132)[128:132] == b"DICM"
    except OSError:
        return False


def kind_of(path: Path) -> Kind | None:
    """What a file is, from its name and first bytes; None when it is none of the three."""
    if is_nifti(path):
        return "nifti"
    if is_dicom(path):
        return "dicom"
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return "image"
    try:
        return "image" if sniff_format(_head(path, 16)) is not None else None
    except OSError:
        return None


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def walk(folder: Path) -> tuple[list[Path], list[Failure]]:
    """Every non-hidden file below ``folder`` (sorted), skipping ``masks/`` as the data layer does."""
    files: list[Path] = []
    failures: list[Failure] = []

    def failed(err: OSError) -> None:
        failures.append(Failure(str(err.filename or folder), f"folder cannot be listed: {err.strerror or err}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=failed):
        dirnames[:] = sorted(n for n in dirnames if not _hidden(n) and n.lower() not in RESERVED_DIRS)
        files.extend(Path(dirpath) / n for n in filenames if not _hidden(n))
    return sorted(files), failures


# ------------------------------------------------------------------------------------------------ pixels


def square_pixels(arr: np.ndarray, row_spacing: float, col_spacing: float) -> np.ndarray:
    """Resample a (H, W) float array so that its pixels are square (rows stretched to the column spacing)."""
    if not (row_spacing > 0 and col_spacing > 0) or abs(row_spacing / col_spacing - 1) <= 0.01:
        return arr
    h, w = arr.shape
    new_h = max(1, round(h * row_spacing / col_spacing))
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    return np.asarray(img.resize((w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)


def _float_image(arr: np.ndarray) -> Image.Image:
    """(H, W) array -> PIL mode F (float32), which ``to_gray`` passes through in its native range."""
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))


# ------------------------------------------------------------------------------------------------ images


def read_image(path: Path, cfg: PreprocessConfig) -> Slice:
    """A 2-D image file, decoded as every model input is (JPEG at the DCT draft scale of the training cache)."""
    from popevit.data.preprocess import decode_for_model

    try:
        data = read_bytes(path)
        img = decode_for_model(data, path, cfg)
    except DecodeError as err:
        raise InputError(f"{err.reason}; replace it with an intact copy of the image") from None
    return Slice(str(path), str(path), img, "image")


# ------------------------------------------------------------------------------------------------ DICOM


def _dcmread(path: Path, *, pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    force = path.suffix.lower() in DICOM_EXTENSIONS  # files without the DICM preamble are still read
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, force=force)
    except InvalidDicomError as err:
        raise InputError(f"not a valid DICOM file ({err}); export the slice again from the scanner or PACS") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(
            f"truncated or corrupt DICOM file ({type(err).__name__}: {_one_line(err)}); copy the file again"
        ) from None


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _frame_dataset(ds: Any, frame: int) -> Any:
    """A dataset holding the rescale and window of one frame: the top level, then the shared functional groups,
    then the frame's own (enhanced multi-frame files keep them there)."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for key in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "WindowCenter", "WindowWidth",
                "VOILUTFunction", "VOILUTSequence", "BitsStored", "PixelRepresentation",
                "PhotometricInterpretation"):  # fmt: skip
        if key in ds:
            out[key] = ds[key]
    groups = []
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    if "PerFrameFunctionalGroupsSequence" in ds and frame < len(ds.PerFrameFunctionalGroupsSequence):
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    for group in groups:
        for seq in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if seq in group and len(group[seq].value):
                for elem in group[seq].value[0]:
                    out[elem.tag] = elem
    return out


def _pixel_spacing(ds: Any) -> tuple[float, float]:
    spacing = ds.get("PixelSpacing")
    if spacing is None and "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        measures = ds.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        spacing = measures[0].get("PixelSpacing") if measures else None
    try:
        return float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return 1.0, 1.0


def dicom_frames(ds: Any, path: Path) -> tuple[list[np.ndarray], bool]:
    """The displayable frames of a DICOM dataset: modality LUT, then VOI LUT/window, MONOCHROME1 inverted.

    Returns:
        ``(frames, windowed)``: float32 (H, W) arrays with square pixels, and whether a window from the tags was used.

    Raises:
        InputError: no pixel data, colour data, or pixel data pydicom cannot decode here.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality", "unknown object")
        raise InputError(
            f"DICOM without pixel data ({what}: a report, structure set or other non-image object); pass the image "
            "files of the series instead"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"colour DICOM (PhotometricInterpretation {photometric}, {samples} samples per pixel): MR slices are "
            "grayscale, so this is a screenshot or secondary capture; export the original grayscale series instead"
        )
    try:
        arr = ds.pixel_array
    except Exception as err:  # a missing decoder plugin, a truncated frame, inconsistent tags
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or "unknown transfer syntax"
        raise InputError(
            f"cannot decode the DICOM pixel data ({name}; {type(err).__name__}: {_one_line(err)}); the file is "
            "truncated or compressed in a way pydicom cannot decode here: re-export it uncompressed "
            "(e.g. `dcmdjpeg IN OUT` or `gdcmconv --raw IN OUT`)"
        ) from None
    n = int(ds.get("NumberOfFrames", 1) or 1)
    stack = arr if n > 1 else arr[None]
    row_spacing, col_spacing = _pixel_spacing(ds)
    frames, windowed = [], False
    for i, frame in enumerate(stack):
        fds = _frame_dataset(ds, i)
        values = apply_modality_lut(frame, fds)
        has_window = "VOILUTSequence" in fds or ("WindowCenter" in fds and "WindowWidth" in fds)
        if has_window:
            values = apply_voi_lut(values, fds)
            windowed = True
        values = np.asarray(values, dtype=np.float32)
        if photometric == "MONOCHROME1":  # minimum = white: flip so that bright means high signal, as in MONOCHROME2
            values = values.max() + values.min() - values
        frames.append(square_pixels(values, row_spacing, col_spacing))
    return frames, windowed


def _series_key(path: Path, ds: Any) -> tuple[str, tuple[int, float, str]]:
    """``(series id, sort key)`` of a header: series UID (else the folder); position along the slice normal, else
    InstanceNumber, else the file name."""
    series = str(ds.get("SeriesInstanceUID", "") or f"folder:{path.parent}")
    try:
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        ori = np.array([float(v) for v in ds.ImageOrientationPatient])
        return series, (0, float(pos @ np.cross(ori[:3], ori[3:])), path.name)
    except (AttributeError, TypeError, ValueError, IndexError):
        pass
    try:
        return series, (1, float(int(ds.get("InstanceNumber"))), path.name)
    except (TypeError, ValueError):
        return series, (2, 0.0, path.name)


def read_dicom_group(paths: Sequence[Path], slices: str) -> Iterator[Slice | Failure]:
    """DICOM files -> slices: one per frame of each file; files of one series grouped and ordered.

    A single-file series is treated as a volume only when it has several frames. ``slices`` selects within every
    volume (series or multi-frame file).
    """
    series: dict[str, list[tuple[tuple[int, float, str], Path]]] = {}
    for p in paths:
        try:
            head = _dcmread(p, pixels=False)
        except InputError as err:
            yield Failure(str(p), str(err))
            continue
        uid, key = _series_key(p, head)
        series.setdefault(uid, []).append((key, p))
    for uid, members in series.items():
        members.sort()
        files = [p for _, p in members]
        if len(files) == 1:
            yield from _dicom_file(files[0], slices)
            continue
        chosen = set(select_slices(len(files), slices))
        for index, p in enumerate(files):
            if index not in chosen:
                continue
            yield from _dicom_file(p, "all", volume=uid, index=index, n_slices=len(files))


def _dicom_file(
    path: Path, slices: str, *, volume: str | None = None, index: int | None = None, n_slices: int | None = None
) -> Iterator[Slice | Failure]:
    try:
        ds = _dcmread(path, pixels=True)
        frames, windowed = dicom_frames(ds, path)
    except InputError as err:
        yield Failure(str(path), str(err))
        return
    window = "tags" if windowed else "percentile"
    if len(frames) == 1:
        yield Slice(str(path), str(path), _float_image(frames[0]), "dicom", volume, index, n_slices, window)
        return
    for i in select_slices(len(frames), slices):
        yield Slice(f"{path}#frame={i}", str(path), _float_image(frames[i]), "dicom", str(path), i, len(frames), window)


# ------------------------------------------------------------------------------------------------ NIfTI


def nifti_axial(arr: np.ndarray) -> np.ndarray:
    """A canonical (RAS+) axial slice ``[x, y]`` -> the radiological view: anterior up, patient's right on the left.

    Row ``r`` shows ``y = Ny - 1 - r`` (anterior first) and column ``c`` shows ``x = Nx - 1 - c`` (RAS+ x points to
    the patient's right, which a radiologist sees on the left).
    """
    return np.ascontiguousarray(arr[::-1, ::-1].T)


def read_nifti(path: Path, slices: str) -> Iterator[Slice | Failure]:
    """A NIfTI volume -> its selected axial slices in canonical orientation (one :class:`Failure` if unreadable)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
            raise InputError(
                f"4-D NIfTI of shape {shape} (a time series or several volumes); pass one 3-D volume, e.g. "
                f"`fslroi IN OUT 0 1` or nibabel's `nib.save(img.slicer[..., 0], OUT)`"
            )
        if len(shape) > 3:
            img = img.slicer[..., 0] if len(shape) == 4 else nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(
                shape[:3]), img.affine, img.header)  # fmt: skip
        if len(shape) == 2:
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, img.header)
        canon = nib.as_closest_canonical(img)
        data = np.asarray(canon.get_fdata(dtype=np.float32))  # (X, Y, Z), RAS+
        zooms = [float(z) for z in canon.header.get_zooms()[:3]]
    except InputError as err:
        yield Failure(str(path), str(err))
        return
    except Exception as err:  # nibabel raises many types for a damaged file: ImageFileError, EOFError, zlib, ...
        yield Failure(
            str(path),
            f"unreadable NIfTI ({type(err).__name__}: {_one_line(err)}); the file is truncated or not NIfTI: "
            "copy it again or convert it with `dcm2niix`",
        )
        return
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    n = data.shape[2]
    for z in select_slices(n, slices):
        view = square_pixels(nifti_axial(data[:, :, z]), zooms[1], zooms[0])
        yield Slice(f"{path}#z={z}", str(path), _float_image(view), "nifti", str(path), z, n)


# ------------------------------------------------------------------------------------------------ driver


def iter_inputs(
    inputs: Sequence[str | Path], cfg: PreprocessConfig, slices: str = "all"
) -> Iterator[Slice | Failure | Skipped]:
    """Every slice of every input, in order, and every input that gives none.

    Args:
        inputs: files and folders (walked recursively; hidden files and ``masks/`` skipped, DICOM files grouped by
            series per folder).
        cfg: the run's preprocessing (only the JPEG draft size is used here).
        slices: ``all``, ``middle`` or ``A:B`` within each volume.

    Yields:
        :class:`Slice` per 2-D slice; :class:`Failure` per input that cannot be read (named on the command line or
        a candidate file in a folder); :class:`Skipped` per other file met in a folder (e.g. ``notes.txt``).
    """
    parse_slices(slices)  # fail on a bad spec before reading anything
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files, failures = walk(p)
            yield from failures
            dicoms = []
            for f in files:
                kind = kind_of(f)
                if kind == "dicom":
                    dicoms.append(f)
                elif kind is None:
                    yield Skipped(str(f), "not an image, DICOM or NIfTI file")
                else:
                    yield from _read_one(f, kind, cfg, slices)
            yield from read_dicom_group(dicoms, slices)
        elif p.is_file():
            kind = kind_of(p)
            if kind is None:
                yield Failure(str(p), _not_an_input(p))
            elif kind == "dicom":
                yield from read_dicom_group([p], slices)
            else:
                yield from _read_one(p, kind, cfg, slices)
        elif p.exists():
            yield Failure(str(p), "neither a file nor a folder; pass image, DICOM or NIfTI files, or folders")
        else:
            yield Failure(str(p), "not found; check the path")


def _read_one(path: Path, kind: Kind, cfg: PreprocessConfig, slices: str) -> Iterator[Slice | Failure]:
    if kind == "nifti":
        yield from read_nifti(path, slices)
        return
    try:
        yield read_image(path, cfg)
    except InputError as err:
        yield Failure(str(path), str(err))


def _not_an_input(path: Path) -> str:
    try:
        head = _head(path, 8)
    except OSError as err:
        return f"unreadable: {err.strerror or err}; check the file's permissions"
    if not head:
        return "empty file (0 bytes); replace it with an intact copy"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path) as g:
                inner = g.read(352)
            if inner[344:348] == b"n+1\x00":
                return "a gzipped NIfTI without the .nii.gz name; rename it to *.nii.gz"
        except (OSError, EOFError):
            pass
    return (
        f"not an image, DICOM or NIfTI file (content starts with {head.hex(' ')}); pass PNG/JPEG/TIFF/BMP images, "
        "DICOM (.dcm) or NIfTI (.nii, .nii.gz) files"
    )
