"""Fixtures for serving tests: a tiny ViT trained for a few steps on phantoms, saved as a run with its manifest, and
makers of DICOM and NIfTI files from phantom slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from popevit.artifact import ModelMeta, save_artifact
from popevit.config import PreprocessConfig

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
SIZE = 32


@pytest.fixture(scope="session")
def serve_phantoms(tmp_path_factory) -> Path:
    """160 phantoms (4 classes x 40, 64 px, seed 1): enough images for the OOD flag's input model."""
    from popevit.data.phantoms import synthesize

    return synthesize(tmp_path_factory.mktemp("serve-phantoms") / "data", per_class=40, size=64, seed=1)


@pytest.fixture(scope="session")
def serve_manifest(serve_phantoms, tmp_path_factory) -> Path:
    from popevit.data import make_split

    out = tmp_path_factory.mktemp("serve-split") / "manifest.csv"
    return make_split(serve_phantoms, out, seed=0, ratios=(0.5, 0.25, 0.25))


def train_tiny(manifest: Path, pos_enc: str = "rope_axial", steps: int = 30, seed: int = 0) -> torch.nn.Module:
    """``vit_tiny`` trained for ``steps`` AdamW steps on the manifest's training split (the run's own pipeline:
    cached preprocessing, eval transform)."""
    from popevit.data import read_manifest
    from popevit.data.dataset import ImageDataset
    from popevit.models import create_model

    torch.manual_seed(seed)
    rows = read_manifest(manifest).select("train")
    ds = ImageDataset([r.path for r in rows], [CLASSES.index(r.label) for r in rows], PreprocessConfig(img_size=SIZE))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    model = create_model("vit_tiny", num_classes=4, in_chans=1, img_size=SIZE, pos_enc=pos_enc)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(y), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def make_run(out: Path, manifest: Path, pos_enc: str = "rope_axial", steps: int = 30) -> Path:
    """A run folder (model.safetensors, model.json, manifest.csv) of :func:`train_tiny`'s model."""
    kwargs = {"num_classes": 4, "in_chans": 1, "img_size": SIZE, "pos_enc": pos_enc}
    meta = ModelMeta("vit_tiny", kwargs, CLASSES, PreprocessConfig(img_size=SIZE))
    save_artifact(train_tiny(manifest, pos_enc, steps), meta, out)
    shutil.copy(manifest, out / "manifest.csv")
    return out


@pytest.fixture(scope="session")
def tiny_run_template(serve_manifest, tmp_path_factory) -> Path:
    """The trained tiny run with its OOD flag fitted (read-only: tests copy it with :func:`copy_run`)."""
    from popevit.serve.ood import fit_ood

    run = make_run(tmp_path_factory.mktemp("serve-runs") / "tiny-s0", serve_manifest)
    fit_ood(run)
    return run


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path) -> Path:
    """A private copy of the trained tiny run (tests may add evaluations, exports, ...)."""
    return Path(shutil.copytree(tiny_run_template, tmp_path / "tiny-s0"))


# ------------------------------------------------------------------------------------------------ file makers


def phantom_gray(path: Path) -> np.ndarray:
    """A phantom as a uint8 (H, W) grayscale array."""
    return np.asarray(Image.open(path).convert("L"))


def write_dicom(
    path: Path,
    frames: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    monochrome1: bool = False,
    series_uid: str | None = None,
    instance: int = 1,
    position: float | None = None,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    with_pixels: bool = True,
    photometric: str | None = None,
) -> Path:
    """Write an MR DICOM file (explicit VR little endian, uint16) of ``frames`` (H, W) or (F, H, W) stored values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    frames = np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [0.0, 0.0, float(position)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = list(pixel_spacing)
    if with_pixels:
        ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
        ds.PhotometricInterpretation = photometric or ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
        ds.Rows, ds.Columns = frames.shape[-2:] if photometric != "RGB" else frames.shape[:2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if photometric == "RGB":
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PlanarConfiguration = 0
            ds.PixelData = np.ascontiguousarray(frames.astype(np.uint8)).tobytes()
        else:
            if frames.ndim == 3:
                ds.NumberOfFrames = frames.shape[0]
            ds.PixelData = np.ascontiguousarray(frames.astype(np.uint16)).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``volume`` (X, Y, Z[, T]) as NIfTI-1 with ``affine`` (identity: RAS+)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def radiological_to_ras(view: np.ndarray) -> np.ndarray:
    """The inverse of :func:`popevit.serve.inputs.nifti_axial`: a displayed (rows, cols) slice -> RAS+ ``[x, y]``."""
    return np.ascontiguousarray(view.T[::-1, ::-1])


# ------------------------------------------------------------------------------------------------ non-MRI images


def non_mri_images(rng: np.random.Generator, n: int = 20) -> dict[str, list[np.ndarray]]:
    """Images that are not brain MRI, made here: photo-like colour scenes, colour noise, uniform blanks, gray
    random noise and CIFAR-like 32 x 32 colour scenes (the 'dead leaves' model of natural images: occluding
    random shapes, Lee, Mumford & Huang 2001)."""
    from PIL import ImageDraw

    def scene(h: int, w: int) -> np.ndarray:
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(60):
            r = int(max(h, w) * rng.uniform(0.02, 0.3))
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = [cx - r, cy - r, cx + r, cy + int(r * rng.uniform(0.3, 1.5))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
        return np.clip(arr, 0, 255).astype(np.uint8)

    return {
        "photo": [scene(96, 128) for _ in range(n)],
        "colour_noise": [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)],
        "blank": [np.full((64, 64), int(rng.integers(0, 256)), np.uint8) for _ in range(n)],
        "gray_noise": [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(n)],
        "cifar_like": [scene(32, 32) for _ in range(n)],
    }
