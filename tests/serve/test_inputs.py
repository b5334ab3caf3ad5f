"""Reading what MRI comes in: images, DICOM (pydicom's own test files and DICOMs written here from phantoms) and
NIfTI (nibabel's test files and volumes written here); every unreadable input becomes one clear failure."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from popevit.config import PreprocessConfig
from popevit.data.decode import to_gray
from popevit.data.preprocess import preprocess_image
from popevit.serve.inputs import Failure, Skipped, Slice, iter_inputs, nifti_axial, parse_slices, select_slices

from .conftest import phantom_gray, radiological_to_ras, write_dicom, write_nifti

CFG = PreprocessConfig(img_size=32)


def pydicom_file(name: str) -> Path:
    """A test file shipped inside the installed pydicom (never downloaded)."""
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        pytest.skip(f"pydicom {pydicom.__version__} does not ship {name}")
    return path


def nibabel_file(name: str) -> Path:
    """A test file shipped inside the installed nibabel."""
    import nibabel.testing

    path = Path(nibabel.testing.data_path) / name
    if not path.is_file():
        pytest.skip(f"nibabel does not ship {name}")
    return path


def read(*paths, slices: str = "all") -> tuple[list[Slice], list[Failure], list[Skipped]]:
    items = list(iter_inputs(list(paths), CFG, slices))
    return ([i for i in items if isinstance(i, Slice)], [i for i in items if isinstance(i, Failure)],
            [i for i in items if isinstance(i, Skipped)])  # fmt: skip


def values(s: Slice) -> np.ndarray:
    return to_gray(s.image)


@pytest.fixture(scope="module")
def phantom(serve_phantoms) -> np.ndarray:
    return phantom_gray(serve_phantoms / "glioma" / "glioma_0002.png")


# ------------------------------------------------------------------------------------------------ slices option


def test_slice_selection():
    assert select_slices(7, "all") == list(range(7))
    assert select_slices(7, "middle") == [3]
    assert select_slices(7, "2:5") == [2, 3, 4] and select_slices(7, ":2") == [0, 1]
    assert select_slices(7, "5:") == [5, 6]
    assert parse_slices("-3:") == ("range", -3, None)
    for bad in ("half", "1:2:3", "a:b", ""):
        with pytest.raises(ValueError, match="--slices"):
            parse_slices(bad)


# ------------------------------------------------------------------------------------------------ DICOM


def test_pydicom_mr_small_is_one_windowed_slice():
    slices, failed, _ = read(pydicom_file("MR_small.dcm"))
    assert not failed and len(slices) == 1
    s = slices[0]
    assert s.kind == "dicom" and s.window == "tags" and s.volume is None and to_gray(s.image).shape == (64, 64)
    assert preprocess_image(s.image, CFG).shape == (32, 32)


def test_pydicom_multiframe_gives_one_slice_per_frame():
    path = pydicom_file("rtdose.dcm")  # 15 frames
    slices, failed, _ = read(path)
    assert not failed and [s.index for s in slices] == list(range(15))
    assert {s.volume for s in slices} == {str(path)} and slices[3].id == f"{path}#frame=3"
    middle, _, _ = read(path, slices="middle")
    assert [s.index for s in middle] == [7]


def test_phantom_dicom_equals_the_png_through_preprocessing(phantom, tmp_path):
    """Stored values with RescaleSlope/Intercept, and MONOCHROME1 with inverted stored values, reach the model as the
    same image as the PNG: the modality LUT is applied and MONOCHROME1 is inverted."""
    ref = preprocess_image(Image.fromarray(phantom), CFG)
    plain = write_dicom(tmp_path / "plain.dcm", phantom)
    rescaled = write_dicom(tmp_path / "rescaled.dcm", phantom.astype(np.uint16) * 3 + 7, slope=0.5, intercept=-20)
    inverted = write_dicom(tmp_path / "inverted.dcm", 4000 - phantom.astype(np.uint16) * 10, monochrome1=True)
    slices, failed, _ = read(plain, rescaled, inverted)
    assert not failed and len(slices) == 3
    np.testing.assert_array_equal(values(slices[0]), phantom.astype(np.float32))
    np.testing.assert_allclose(values(slices[1]), (phantom.astype(np.float64) * 3 + 7) * 0.5 - 20, atol=1e-4)
    assert all(s.window == "percentile" for s in slices)
    for s in slices:
        assert np.abs(preprocess_image(s.image, CFG).astype(int) - ref).max() <= 1


def test_window_from_tags_saturates_outside_the_window(phantom, tmp_path):
    stored = phantom.astype(np.uint16) * 10  # 0 .. 2550
    center, width = 1200.0, 801.0
    path = write_dicom(tmp_path / "windowed.dcm", stored, window=(center, width))
    (s,), failed, _ = read(path)
    assert not failed and s.window == "tags"
    v = values(s)
    lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2  # DICOM PS3.3 C.11.2.1.2.1
    below, above = stored <= lo, stored > hi
    assert below.any() and above.any()
    assert np.all(v[below] == v.min()) and np.all(v[above] == v.max())
    inside = ~below & ~above
    assert np.corrcoef(stored[inside], v[inside])[0, 1] > 0.9999  # linear inside the window


def test_series_folder_is_one_volume_ordered_along_the_normal(serve_phantoms, tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    names = sorted((serve_phantoms / "notumor").glob("*.png"))[:4]
    positions = [30.0, -10.0, 20.0, 0.0]  # file order is not slice order
    for i, (png, z) in enumerate(zip(names, positions, strict=True)):
        write_dicom(series / f"IM{i:04d}", phantom_gray(png), series_uid="1.2.3.4", instance=i + 1, position=z)
    (series / "notes.txt").write_text("acquired on scanner 3")
    slices, failed, skipped = read(series)
    assert not failed and [Path(s.path).name for s in slices] == ["IM0001", "IM0003", "IM0002", "IM0000"]
    assert [s.index for s in slices] == [0, 1, 2, 3] and {s.volume for s in slices} == {"1.2.3.4"}
    assert all(s.n_slices == 4 for s in slices)
    assert [Path(k.path).name for k in skipped] == ["notes.txt"]  # listed, not silently dropped
    two, _, _ = read(series, slices="1:3")
    assert [Path(s.path).name for s in two] == ["IM0003", "IM0002"]


def test_non_square_pixels_are_resampled(phantom, tmp_path):
    path = write_dicom(tmp_path / "aniso.dcm", phantom, pixel_spacing=(0.5, 1.0))  # rows 0.5 mm apart, columns 1 mm
    (s,), _, _ = read(path)
    assert values(s).shape == (phantom.shape[0] // 2, phantom.shape[1])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: pydicom_file("test-SR.dcm"), "DICOM without pixel data"),
        (lambda d: pydicom_file("SC_rgb_small_odd.dcm"), "colour DICOM (PhotometricInterpretation RGB"),
        (lambda d: write_dicom(d / "rgb.dcm", np.zeros((8, 8, 3), np.uint8), photometric="RGB"), "colour DICOM"),
        (lambda d: write_dicom(d / "nopix.dcm", np.zeros((8, 8)), with_pixels=False), "DICOM without pixel data"),
        (lambda d: pydicom_file("MR_truncated.dcm"), "cannot decode the DICOM pixel data"),
        (lambda d: _truncated(write_dicom(d / "cut.dcm", np.zeros((64, 64))), 200), "DICOM"),
    ],
    ids=["sr-report", "pydicom-rgb", "written-rgb", "no-pixel-data", "pydicom-truncated", "cut-in-header"],
)
def test_bad_dicom_is_one_line_naming_the_problem_and_the_fix(make, expected, tmp_path):
    path = make(tmp_path)
    slices, failed, _ = read(path)
    assert not slices and len(failed) == 1
    f = failed[0]
    assert f.path == str(path) and expected in f.reason and "\n" not in f.reason
    assert any(w in f.reason for w in ("pass", "export", "copy", "re-export")), f.reason  # says what to do


def _truncated(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


# ------------------------------------------------------------------------------------------------ NIfTI


def test_nibabel_anatomical_volume_reoriented_to_ras():
    import nibabel as nib

    path = nibabel_file("anatomical.nii")  # LAS on disk
    slices, failed, _ = read(path)
    canon = nib.as_closest_canonical(nib.load(str(path)))
    data = canon.get_fdata(dtype=np.float32)
    assert not failed and len(slices) == data.shape[2] == 25
    assert slices[5].id == f"{path}#z=5" and slices[5].volume == str(path) and slices[5].n_slices == 25
    zooms = canon.header.get_zooms()
    expected = nifti_axial(data[:, :, 5])
    if abs(zooms[1] / zooms[0] - 1) <= 0.01:
        np.testing.assert_array_equal(values(slices[5]), expected)
    else:
        assert values(slices[5]).shape[1] == expected.shape[1]
    middle, _, _ = read(path, slices="middle")
    assert [s.index for s in middle] == [12]


def test_nifti_orientation_is_undone(serve_phantoms, tmp_path):
    """The same head stored RAS+ and stored LPS (x and y reversed, affine saying so) reads as the same slices, each
    the phantom exactly as drawn (anterior up, the patient's right on the left)."""
    views = [phantom_gray(p).astype(np.float32) for p in sorted((serve_phantoms / "glioma").glob("*.png"))[:3]]
    ras = np.stack([radiological_to_ras(v) for v in views], axis=-1)  # (X, Y, Z)
    lps = ras[::-1, ::-1, :]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [ras.shape[0] - 1, ras.shape[1] - 1]
    a = write_nifti(tmp_path / "ras.nii.gz", ras)
    b = write_nifti(tmp_path / "lps.nii", lps, flip)
    sa, fa, _ = read(a)
    sb, fb, _ = read(b)
    assert not fa and not fb and len(sa) == len(sb) == 3
    for i, view in enumerate(views):
        np.testing.assert_array_equal(values(sa[i]), view)
        np.testing.assert_array_equal(values(sb[i]), view)


def test_four_d_nifti_is_refused_with_the_fix(tmp_path):
    slices, failed, _ = read(nibabel_file("functional.nii"))
    assert not slices and len(failed) == 1
    assert "4-D NIfTI of shape (17, 21, 3, 20)" in failed[0].reason and "fslroi" in failed[0].reason
    single = write_nifti(tmp_path / "one.nii", np.random.default_rng(0).random((8, 8, 3, 1)))
    assert len(read(single)[0]) == 3  # a 4-D file with one volume is that volume


def test_truncated_nifti_is_one_failure(tmp_path):
    good = write_nifti(tmp_path / "vol.nii.gz", np.random.default_rng(0).random((16, 16, 4)))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[:-60])
    slices, failed, _ = read(cut)
    assert not slices and len(failed) == 1 and "NIfTI" in failed[0].reason and "\n" not in failed[0].reason


# ------------------------------------------------------------------------------------------------ images, folders


def test_image_modes_and_bit_depths(phantom, tmp_path):
    img16 = (phantom.astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(img16).save(tmp_path / "sixteen.png")
    Image.fromarray(phantom).convert("RGB").save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(phantom).save(tmp_path / "gray.tif")
    Image.fromarray(phantom).convert("P").save(tmp_path / "palette.bmp")
    slices, failed, _ = read(tmp_path)
    assert not failed and sorted(Path(s.path).name for s in slices) == ["gray.tif", "palette.bmp", "rgb.jpg",
                                                                        "sixteen.png"]  # fmt: skip
    ref = preprocess_image(Image.fromarray(phantom), CFG)
    by_name = {Path(s.path).name: preprocess_image(s.image, CFG) for s in slices}
    np.testing.assert_array_equal(by_name["sixteen.png"], ref)
    np.testing.assert_array_equal(by_name["gray.tif"], ref)


def test_bad_files_are_listed_and_the_rest_still_read(phantom, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(phantom).save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    good = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (folder / "readme.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")
    masks = folder / "masks"
    masks.mkdir()
    Image.fromarray(phantom).save(masks / "good.png")
    slices, failed, skipped = read(folder)
    assert [Path(s.path).name for s in slices] == ["good.png"]
    reasons = {Path(f.path).name: f.reason for f in failed}
    assert set(reasons) == {"empty.png", "truncated.png", "corrupt.jpg"}
    assert "empty file" in reasons["empty.png"] and "truncated" in reasons["truncated.png"]
    assert all("replace it with an intact copy" in r for r in reasons.values())
    assert [Path(s.path).name for s in skipped] == ["readme.txt"]


def test_explicit_non_input_and_missing_paths_fail(tmp_path):
    text = tmp_path / "report.pdf"
    text.write_bytes(b"%PDF-1.4 not an image")
    gz = tmp_path / "volume.gz"
    with gzip.open(gz, "wb") as f:
        f.write(bytes(344) + b"n+1\x00" + bytes(100))
    _, failed, _ = read(text, gz, tmp_path / "nowhere.png")
    reasons = [f.reason for f in failed]
    assert "not an image, DICOM or NIfTI file" in reasons[0] and "25 50 44 46" in reasons[0]
    assert "rename it to *.nii.gz" in reasons[1]
    assert reasons[2] == "not found; check the path"
