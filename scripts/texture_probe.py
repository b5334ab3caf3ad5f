"""Can a model read an image's original size off its preprocessed pixels?

Tumour images are almost all 512 x 512 and no-tumour images mostly smaller, so the original size gives the class
away (docs/experiments/data_audit.md). Preprocessing makes every array 128 x 128, and the audit's probe on (mean, std) falls to 0.547.
But large JPEGs are decoded in the DCT domain at half size (the cache's JPEG draft) and small ones at full size,
and each is resampled by a different factor, so blur and noise texture might still carry the size. This measures it
on the cached 128-px arrays the models were trained on, with texture features the audit's probe does not have:

- probe A: within the no-tumour class (sizes mixed), predict "original side >= 512" from texture alone,
  grouped 5-fold CV (duplicate groups never straddle a fold): balanced accuracy and AUROC;
- probe B: the 4-class label from texture alone, grouped 5-fold CV, beside the majority rate;
- counterfactual C: the large no-tumour images, each scored by probe A's forest of the fold that held it out, once
  as cached and once after first shrinking the original to the median side of the small no-tumour images. Only
  the decode and resampling path changes, not the anatomy or the source. If A reads the path, the shrunk copies
  must score as "small"; if it reads the source, they keep their score.
- C on tumour images: A's forest fitted on all no-tumour images scores up to 600 tumour images of side >= 512, as
  cached and shrunk the same way (does the no-tumour size detector transfer to other anatomy?).

Run from the repository root (about a minute; arrays come from the decode-once cache):
``.venv/bin/python scripts/texture_probe.py runs/splits/kaggle_train_seed0.csv > results/data_audit/texture_probe.txt``
"""

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

from popevit.config import PreprocessConfig
from popevit.data.dataset import ImageDataset
from popevit.data.decode import load_image
from popevit.data.manifest import EXCLUDED
from popevit.data.preprocess import preprocess_image

SEED = 0


def texture(a: np.ndarray) -> list[float]:
    """Blur/noise statistics of a (S, S) uint8 array, scale-free (divided by the image's own std)."""
    x = a.astype(np.float64)
    s = x.std() + 1e-9
    gx, gy = np.diff(x, axis=1), np.diff(x, axis=0)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    power = np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean()))) ** 2
    n = x.shape[0]
    yy, xx = np.mgrid[:n, :n] - n // 2
    r = np.hypot(yy, xx) / (n / 2)
    bands = [power[(r >= lo) & (r < hi)].sum() / power.sum() for lo, hi in ((0.25, 0.5), (0.5, 0.75), (0.75, 1.5))]
    return [
        np.abs(gx).mean() / s,
        np.abs(gy).mean() / s,
        np.abs(lap).mean() / s,
        np.median(np.abs(lap)) / s,  # noise floor: most pixels are flat background or smooth tissue
        *bands,
    ]


def forest() -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=300, min_samples_leaf=2, random_state=SEED, n_jobs=1)


def main(manifest: str) -> None:
    with open(manifest, encoding="utf-8-sig") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] != EXCLUDED]
    cfg = PreprocessConfig(img_size=128, in_chans=1)
    hashes = [r["content_hash"] for r in rows]
    ds = ImageDataset([Path(r["path"]) for r in rows], [0] * len(rows), cfg, content_hashes=hashes)
    bad = dict(ds.prepare(workers=1))
    assert not bad, bad
    feats = np.array([texture(ds.array(i)) for i in range(len(rows))])
    labels = np.array([r["label"] for r in rows])
    side = np.array([max(int(r["width"]), int(r["height"])) for r in rows])
    big = side >= 512
    groups = np.unique([r["group"] for r in rows], return_inverse=True)[1]
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=SEED)
    print(f"manifest {manifest}: {len(rows)} images (all splits), preprocessing {cfg.model_dump()}")
    for c in sorted(set(labels)):
        m = labels == c
        print(f"  {c:<10} {m.sum():4d} images, {big[m].mean():.1%} with side >= 512")

    nt = labels == "notumor"
    p = cross_val_predict(forest(), feats[nt], big[nt], groups=groups[nt], cv=cv, method="predict_proba")[:, 1]
    print(f"\nA. no-tumour, original side >= 512 from texture: {nt.sum()} images ({big[nt].sum()} large)")
    print(f"   balanced accuracy {balanced_accuracy_score(big[nt], p >= 0.5):.3f} (chance 0.500), "
          f"AUROC {roc_auc_score(big[nt], p):.3f}")  # fmt: skip

    pred = cross_val_predict(forest(), feats, labels, groups=groups, cv=cv)
    majority = max(np.mean(labels == c) for c in set(labels))
    print(f"\nB. 4-class label from texture: accuracy {np.mean(pred == labels):.3f} (majority {majority:.3f})")

    small_side = int(np.median(side[nt & ~big]))

    def shrunk(i: int) -> list[float]:
        img = load_image(rows[i]["path"])  # full decode, then the small images' path: a smaller original
        img = img.resize((small_side, round(small_side * img.height / img.width)), Image.Resampling.LANCZOS)
        return texture(preprocess_image(img, cfg))

    idx_nt = np.flatnonzero(nt)
    cached_p, shrunk_p = [], []
    for tr, te in cv.split(feats[nt], big[nt], groups[nt]):
        clf = forest().fit(feats[idx_nt[tr]], big[idx_nt[tr]])
        held = [int(i) for i in idx_nt[te] if big[i]]
        cached_p += list(clf.predict_proba(feats[held])[:, 1])
        shrunk_p += list(clf.predict_proba(np.array([shrunk(i) for i in held]))[:, 1])
    cached_p, shrunk_p = np.array(cached_p), np.array(shrunk_p)
    print(f"\nC. the {len(cached_p)} large no-tumour images, each scored by the fold that held it out (P(large)):")
    print(f"   as cached: mean {cached_p.mean():.3f}, called large {np.mean(cached_p >= 0.5):.1%}")
    print(f"   originals first shrunk to {small_side} px: mean {shrunk_p.mean():.3f}, "
          f"called large {np.mean(shrunk_p >= 0.5):.1%}")  # fmt: skip

    clf = forest().fit(feats[nt], big[nt])
    tum = [i for i in range(len(rows)) if not nt[i] and big[i]]
    tum = [int(i) for i in np.random.default_rng(SEED).choice(tum, size=min(600, len(tum)), replace=False)]
    p_cached = clf.predict_proba(feats[tum])[:, 1]
    p_shrunk = clf.predict_proba(np.array([shrunk(i) for i in tum]))[:, 1]
    print(f"\n   {len(tum)} tumour images of side >= 512, scored by A's forest fitted on all no-tumour images:")
    print(f"   as cached: mean {p_cached.mean():.3f}, called large {np.mean(p_cached >= 0.5):.1%}")
    print(f"   originals first shrunk to {small_side} px: mean {p_shrunk.mean():.3f}, "
          f"called large {np.mean(p_shrunk >= 0.5):.1%}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/splits/kaggle_train_seed0.csv")
