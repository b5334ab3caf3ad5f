"""Synthetic axial brain-MRI phantoms with lesion masks: the built-in dataset and the test-fixture factory.

Each image is an axial slice rendered from a layered model: an elliptical head with a scalp (fat) layer and a skull
ring, a CSF rim, cortical gray matter with gyri and sulci, white matter with texture, lateral and third ventricles,
deep gray nuclei and an interhemispheric fissure. Tissue intensities follow T1-, T2- or FLAIR-like contrast tables
(relative orderings as in Bushberg et al., *The Essential Physics of Medical Imaging*, ch. 16). Lesions follow the
radiological descriptions of the four classes of the Kaggle Brain Tumor MRI set:

- ``glioma``: irregular intra-axial mass, heterogeneous signal with a necrotic core, surrounded by an oedema halo;
- ``meningioma``: round, well-circumscribed extra-axial mass abutting the inner table of the skull, with a CSF cleft;
- ``pituitary``: small midline mass at the skull base (sellar region);
- ``notumor``: no lesion.

What real scans vary is randomised identically for every class, so that trivial global statistics (image size,
mean, standard deviation) do not give the class away: image size and aspect, head size/position/rotation, contrast
weighting, skull and background polarity/brightness, bias field, Rician noise and colour mode (L or RGB).
Everything is drawn from ``numpy.random.default_rng((seed, class_index, image_index))``: same seed, same files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from popevit.io import atomic_write_csv

CLASSES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
MASKS_DIR = "masks"
METADATA_FILE = "metadata.csv"

# Tissue intensities in [0, 1] per contrast weighting: fat (scalp), bone, csf, gm, wm.
_CONTRASTS: dict[str, dict[str, float]] = {
    "t1": {"fat": 0.90, "bone": 0.06, "csf": 0.12, "gm": 0.50, "wm": 0.72},
    "t2": {"fat": 0.62, "bone": 0.05, "csf": 0.95, "gm": 0.58, "wm": 0.40},
    "flair": {"fat": 0.70, "bone": 0.05, "csf": 0.10, "gm": 0.62, "wm": 0.46},
}
# Lesion intensities per weighting: solid tumour, necrosis, oedema, meningioma, pituitary adenoma. The T1 row is
# post-contrast (gadolinium), as in most of the figshare/Kaggle tumour scans: enhancing glioma rim, meningioma and
# adenoma are bright, necrosis and oedema dark.
_LESION: dict[str, dict[str, float]] = {
    "t1": {"solid": 0.92, "necrosis": 0.18, "edema": 0.40, "menin": 0.95, "pit": 0.93},
    "t2": {"solid": 0.85, "necrosis": 0.95, "edema": 0.80, "menin": 0.80, "pit": 0.84},
    "flair": {"solid": 0.86, "necrosis": 0.25, "edema": 0.90, "menin": 0.84, "pit": 0.86},
}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a ``cells``-wide random grid upsampled bicubically to ``shape`` (H, W)."""
    h, w = shape
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance-like field ``d`` (< 0 inside), ``px`` = one pixel in d units."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _harmonics(rng: np.random.Generator, phi: np.ndarray, amp: float, kmax: int) -> np.ndarray:
    """Random smooth radial perturbation ``1 + sum_k a_k cos(k phi + p_k)`` for k = 2..kmax."""
    out = np.ones_like(phi)
    for k in range(2, kmax + 1):
        out += amp * rng.uniform(0.2, 1.0) / k**0.5 * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return out


def _paint(img: np.ndarray, mask: np.ndarray, value: np.ndarray | float) -> np.ndarray:
    return img * (1.0 - mask) + value * mask


@dataclass
class _Head:
    """The head frame of one slice: image size, head units ``u`` (left-right), ``v`` (anterior-/posterior+), both
    ~1 at the scalp, their polar form, and one pixel in head units."""

    h: int
    w: int
    a: float
    b: float
    th: float
    dx: np.ndarray
    dy: np.ndarray
    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray
    phi: np.ndarray
    upx: float


_Lesion = tuple[float, float, float]  # centre (u, v) and radius in head units


def _head(rng: np.random.Generator, size: int | None) -> _Head:
    """Image size and aspect (random when ``size`` is None, as in real collections) and the head's placement."""
    if size is None:
        base = int(rng.choice([192, 224, 256, 320, 384, 448, 512]))
        aspect = float(rng.choice([1.0, 1.0, 1.0, rng.uniform(0.8, 1.25)]))
        h, w = base, max(64, round(base * aspect))
    else:
        h = w = int(size)
    px = 1.0 / min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    m = float(min(h, w))
    a = m * rng.uniform(0.33, 0.41)
    b = min(a * rng.uniform(1.08, 1.22), 0.47 * h / max(np.cos(0.25), 1e-3))
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    cy = h / 2 + rng.uniform(-0.04, 0.04) * h
    th = np.deg2rad(rng.uniform(-12, 12))
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    rho = rho / _harmonics(rng, phi, 0.025, 5)
    rho = rho * (1.0 + 0.06 * np.clip(-v, 0, 1))  # slightly narrower frontal pole (v < 0) than occipital
    return _Head(h, w, a, b, th, dx, dy, u, v, rho, phi, px * m / a)


def _cortex(
    rng: np.random.Generator, g: _Head, img: np.ndarray, t: dict[str, float], r_brain: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gray-matter ribbon folded into gyri, white matter and the interhemispheric fissure.

    Sulci are narrow CSF clefts running inwards from the surface at quasi-periodic angles; the white matter sends a
    finger into every gyrus and retreats around every sulcus. Returns ``(img, brain, n1, n2)``: the brain mask and
    the two noise fields the lesions reuse.
    """
    h, w, u, v, rho, phi, upx = g.h, g.w, g.u, g.v, g.rho, g.phi, g.upx
    n1 = _smooth_noise(rng, (h, w), 9)
    n2 = _smooth_noise(rng, (h, w), int(rng.integers(14, 22)))
    brain = _soft(rho - r_brain, upx)
    img = _paint(img, brain, t["gm"] * (1 + 0.03 * n1))
    n_sulci = int(rng.integers(26, 38))
    wobble = np.zeros_like(phi)
    for k in range(1, 7):
        wobble += rng.uniform(0.2, 0.8) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    wobble += 0.9 * n2
    s = np.cos(n_sulci * phi + wobble)  # +1 at a sulcus, -1 mid-gyrus
    # Per-sulcus depth: a smooth angular field at the sulcal frequency, so neighbouring sulci differ.
    depth = rng.uniform(0.07, 0.12) * (1 + 0.45 * np.cos(n_sulci * 0.5 * phi + 2 * wobble) + 0.3 * n1)
    near_sulcus = np.clip((s - 0.2) / 0.8, 0, 1) ** 0.7
    gm_thick = rng.uniform(0.035, 0.05)
    wm_edge = r_brain - gm_thick - depth * near_sulcus
    wm = _soft(rho - wm_edge, upx) * brain
    img = _paint(img, wm, t["wm"] * (1 + 0.025 * _smooth_noise(rng, (h, w), 28)))
    sulcus = np.clip((s - 0.93) / 0.07, 0, 1) * (rho > r_brain - gm_thick - depth + 0.01)
    img = _paint(img, sulcus * brain * 0.85, t["csf"])
    # Interhemispheric fissure (anterior and posterior) with the falx.
    fissure = _soft(np.abs(u) - 0.01 - 0.004 * n1, upx) * brain * ((v < -0.34) | (v > 0.45))
    return _paint(img, fissure, t["csf"]), brain, n1, n2


def _deep(rng: np.random.Generator, g: _Head, img: np.ndarray, t: dict[str, float]) -> np.ndarray:
    """Deep gray nuclei (caudate heads, thalami), subtle, and the ventricles (size varies with level and atrophy)."""
    u, v, upx = g.u, g.v, g.upx
    vs = rng.uniform(0.45, 1.35)
    for side in (-1, 1):
        for nu, nv, su, sv in ((0.15, -0.12, 0.06, 0.09), (0.1, 0.12, 0.08, 0.1)):
            nuc = np.hypot((u - side * nu) / su, (v - nv) / sv) - 1.0
            img = _paint(img, _soft(nuc, upx * 10) * 0.6, t["gm"])
        # Lateral ventricles: crescents bowing towards the midline, ")(" , frontal horns wider than the bodies.
        vv = v + 0.03
        cu = u - side * (0.05 * vs**0.5 + 0.9 * vv**2 * vs**-0.3)
        width = 0.035 * vs * (1 + 0.5 * np.clip(-vv / 0.25, 0, 1))
        horn = np.hypot(cu / width, vv / (0.3 * vs**0.5))
        img = _paint(img, _soft(horn - 1.0, upx * 15), t["csf"])
    third = np.hypot(u / 0.012, (v - 0.12) / 0.08) - 1.0
    return _paint(img, _soft(third, upx * 60) * (vs > 0.8), t["csf"])


def _glioma(
    rng: np.random.Generator,
    g: _Head,
    img: np.ndarray,
    les: dict[str, float],
    brain: np.ndarray,
    n1: np.ndarray,
    n2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, _Lesion]:
    """Irregular intra-axial mass with a necrotic core and an oedema halo; returns ``(img, mask, (u, v, r))``."""
    h, w, u, v, upx = g.h, g.w, g.u, g.v, g.upx
    r0 = rng.uniform(0.16, 0.28)
    ang0, d0 = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.55)
    tu, tv = d0 * np.cos(ang0), d0 * np.sin(ang0)
    du, dv = u - tu, v - tv
    tphi = np.arctan2(dv, du)
    dist = np.hypot(du, dv)
    edema_r = r0 * rng.uniform(1.5, 2.1) * _harmonics(rng, tphi, 0.45, 7) * (1 + 0.15 * n2)
    edema = _soft(dist - edema_r, upx * 3) * brain
    img = _paint(img, edema * 0.85, les["edema"])
    mass_r = r0 * _harmonics(rng, tphi, 0.35, 6) * (1 + 0.1 * n1)
    mass = _soft(dist - mass_r, upx) * brain
    het = les["solid"] * (1 + 0.18 * _smooth_noise(rng, (h, w), 30))
    img = _paint(img, mass, het)
    core_r = mass_r * rng.uniform(0.3, 0.6) * _harmonics(rng, tphi, 0.3, 5)
    img = _paint(img, _soft(dist - core_r, upx) * mass * (rng.random() < 0.7), les["necrosis"])
    return img, mass > 0.5, (tu, tv, r0)


def _meningioma(
    rng: np.random.Generator, g: _Head, img: np.ndarray, t: dict[str, float], les: dict[str, float], r_inner: float
) -> tuple[np.ndarray, np.ndarray, _Lesion]:
    """Round extra-axial mass abutting the inner table, with a CSF cleft; returns ``(img, mask, (u, v, r))``."""
    h, w, upx = g.h, g.w, g.upx
    r0 = rng.uniform(0.18, 0.28)
    ang0 = rng.uniform(0, 2 * np.pi)
    tu, tv = (r_inner - 0.6 * r0) * np.cos(ang0), (r_inner - 0.6 * r0) * np.sin(ang0)
    # Round in pixel space: distance in pixels scaled by a.
    pdx = g.dx - (tu * g.a * np.cos(g.th) - tv * g.b * np.sin(g.th))
    pdy = g.dy - (tu * g.a * np.sin(g.th) + tv * g.b * np.cos(g.th))
    dist = np.hypot(pdx, pdy) / g.a
    inside = _soft(g.rho - r_inner, upx)
    img = _paint(img, _soft(dist - r0 - 0.02, upx) * inside, t["csf"])  # CSF cleft
    menin = _soft(dist - r0, upx) * inside
    img = _paint(img, menin, les["menin"] * (1 + 0.05 * _smooth_noise(rng, (h, w), 20)))
    return img, menin > 0.5, (tu, tv, r0)


def _pituitary(
    rng: np.random.Generator, g: _Head, img: np.ndarray, les: dict[str, float], brain: np.ndarray
) -> tuple[np.ndarray, np.ndarray, _Lesion]:
    """Small midline mass at the skull base; returns ``(img, mask, (u, v, r))``."""
    r0 = rng.uniform(0.10, 0.15)
    tu, tv = rng.uniform(-0.02, 0.02), rng.uniform(-0.42, -0.3)
    du, dv = g.u - tu, g.v - tv
    dist = np.hypot(du, dv * 1.15)
    pit = _soft(dist - r0 * _harmonics(rng, np.arctan2(dv, du), 0.15, 4), g.upx) * brain
    img = _paint(img, pit, les["pit"] * (1 + 0.05 * _smooth_noise(rng, (g.h, g.w), 16)))
    return img, pit > 0.5, (tu, tv, r0)


def _acquire(rng: np.random.Generator, g: _Head, img: np.ndarray, bg: float, bright_bg: bool) -> np.ndarray:
    """Acquisition: bias field, contrast and gain, Rician noise; float32 in [0, 1]."""
    head = _soft(g.rho - 1.0, g.upx)
    bias = 1.0 + rng.uniform(0.05, 0.2) * _smooth_noise(rng, (g.h, g.w), 3)
    img = img * (head * bias + (1 - head))
    gamma = float(np.exp(rng.normal(0, 0.2)))
    img = np.clip(img, 0, 1) ** gamma
    gain = rng.uniform(0.7, 1.0)
    img = img * gain + (1 - gain) * (bg if bright_bg else 0.0)
    sigma = rng.uniform(0.005, 0.04)
    img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    return np.clip(img, 0, 1).astype(np.float32)


def render(label: str, rng: np.random.Generator, size: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one phantom slice.

    Args:
        label: one of :data:`CLASSES`.
        rng: the per-image random generator.
        size: square side in pixels, or ``None`` for a random size and aspect (as in real collections).

    Returns:
        ``(image, mask, info)``: image float32 (H, W) in [0, 1], mask bool (H, W), and a metadata dict.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; expected one of {CLASSES}")
    g = _head(rng, size)
    h, w = g.h, g.w
    weighting = str(rng.choice(list(_CONTRASTS), p=[0.70, 0.15, 0.15]))  # the Kaggle set is mostly T1 post-contrast
    t = dict(_CONTRASTS[weighting])
    les = _LESION[weighting]
    for k in t:
        t[k] = float(np.clip(t[k] + rng.normal(0, 0.04), 0.02, 1.0))
    bright_skull = rng.random() < 0.25
    if bright_skull:
        t["bone"] = rng.uniform(0.75, 1.0)
    bright_bg = rng.random() < 0.2
    bg = rng.uniform(0.85, 1.0) if bright_bg else rng.uniform(0.0, 0.04)

    # Layers (outer radius in head units, jittered): scalp, skull, CSF rim, brain.
    r_skull = rng.uniform(0.93, 0.96)
    r_inner = r_skull - rng.uniform(0.04, 0.065)
    r_brain = r_inner - rng.uniform(0.01, 0.025)
    img = np.full((h, w), bg, np.float32)
    img = _paint(img, _soft(g.rho - 1.0, g.upx), t["fat"] * (1 + 0.1 * _smooth_noise(rng, (h, w), 12)))
    img = _paint(img, _soft(g.rho - r_skull, g.upx), t["bone"])
    img = _paint(img, _soft(g.rho - r_inner, g.upx), t["csf"])
    img, brain, n1, n2 = _cortex(rng, g, img, t, r_brain)
    img = _deep(rng, g, img, t)

    mask = np.zeros((h, w), bool)
    info: dict = {"tumor_u": "", "tumor_v": "", "tumor_radius": ""}
    lesion: _Lesion | None = None
    if label == "glioma":
        img, mask, lesion = _glioma(rng, g, img, les, brain, n1, n2)
    elif label == "meningioma":
        img, mask, lesion = _meningioma(rng, g, img, t, les, r_inner)
    elif label == "pituitary":
        img, mask, lesion = _pituitary(rng, g, img, les, brain)
    if lesion is not None:
        tu, tv, r0 = lesion
        info.update(tumor_u=round(tu, 3), tumor_v=round(tv, 3), tumor_radius=round(r0, 3))
    img = _acquire(rng, g, img, bg, bright_bg)
    info.update(
        width=w, height=h, weighting=weighting, bright_skull=int(bright_skull), bright_background=int(bright_bg)
    )
    return img, mask, info


def synthesize(out: Path, per_class: int, size: int | None = None, seed: int = 0) -> Path:
    """Write a phantom dataset in the Kaggle layout, with lesion masks and a metadata table.

    Layout: ``out/<class>/<class>_NNNN.png``, ``out/masks/<class>/<same name>.png`` (0/255 masks, empty for
    ``notumor``) and ``out/metadata.csv``. Discovery skips ``masks/`` and lists ``metadata.csv`` as ignored.

    Args:
        out: output folder (created; a folder of earlier phantoms is overwritten, any other non-empty folder is
            refused, so that no user file is replaced).
        per_class: images per class.
        size: square side in pixels; ``None`` draws random sizes and aspects as in real collections.
        seed: base seed; same seed, same files.

    Returns:
        ``out``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if size is not None and size < 16:
        raise ValueError(f"size must be >= 16 pixels (or None for random sizes), got {size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder; pass a new folder for the phantoms", str(out))
    foreign = _foreign_files(out)
    if foreign:
        raise FileExistsError(
            17,
            f"holds files that are not phantoms (e.g. {foreign[0].name}); pass a new or empty folder, e.g. "
            f"{out / 'phantoms'}, so that no file of yours is replaced",
            str(out),
        )
    rows = []
    for ci, label in enumerate(CLASSES):
        (out / label).mkdir(parents=True, exist_ok=True)
        (out / MASKS_DIR / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng((seed, ci, i))
            img, mask, info = render(label, rng, size)
            arr = np.round(img * 255).astype(np.uint8)
            mode = "RGB" if rng.random() < 0.3 else "L"
            pil = Image.fromarray(arr, mode="L")
            if mode == "RGB":
                pil = pil.convert("RGB")
            name = f"{label}_{i:04d}.png"
            pil.save(out / label / name, compress_level=1)
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out / MASKS_DIR / label / name)
            rows.append(
                {
                    "path": f"{label}/{name}",
                    "mask": f"{MASKS_DIR}/{label}/{name}",
                    "label": label,
                    "mode": mode,
                    "seed": seed,
                    **info,
                }
            )
    columns = list(rows[0])
    atomic_write_csv(out / METADATA_FILE, [columns, *([r[c] for c in columns] for r in rows)])  # last: marks a set
    return out


def _foreign_files(out: Path) -> list[Path]:
    """Entries of ``out`` that an earlier :func:`synthesize` could not have written (sorted; none for a new folder)."""
    if not out.is_dir():
        return []
    names = "|".join(CLASSES)
    pattern = re.compile(rf"^({names})_\d{{4}}\.png$")
    foreign = []
    for p in sorted(out.iterdir()):
        if p.name == METADATA_FILE and p.is_file():
            continue
        folders = {MASKS_DIR: [out / MASKS_DIR / c for c in CLASSES]}.get(p.name, [p] if p.name in CLASSES else None)
        if folders is None or not p.is_dir():
            foreign.append(p)
            continue
        for d in folders:
            if d.is_dir():
                foreign += [f for f in sorted(d.iterdir()) if not pattern.match(f.name)]
        if p.name == MASKS_DIR:
            foreign += [f for f in sorted(p.iterdir()) if f.name not in CLASSES]
    return foreign


def mask_path(image_path: Path) -> Path | None:
    """The lesion mask of a phantom image (``<root>/masks/<class>/<name>``), or ``None`` when there is none."""
    image_path = Path(image_path)
    candidate = image_path.parent.parent / MASKS_DIR / image_path.parent.name / image_path.name
    return candidate if candidate.is_file() else None
