"""A plain ResNet18 recipe outside popevit: the control that popevit's recipes are measured against.

Only torch, torchvision, numpy and Pillow. Reads the train/val/test rows of a popevit manifest (so it trains on the
same duplicate-grouped split), trains ResNet18 from scratch, and writes per-image probabilities for the test split
and for any external folders (one row per image: path, label, p_<class>...).

    python scripts/plain_resnet18.py --manifest runs/splits/kaggle_seed0.csv --out runs/plain \
        --external br35h=../shared/data/br35h --epochs 12 --threads 1

``--images popevit`` (or ``popevit-full-decode``) swaps in the pixels popevit's data path makes for
configs/experiments/plain_resnet18.yaml (JPEG draft decode, head crop, background padding, min-max rescale), and
nothing else, to tell a difference of preprocessing from one of training.
"""

import argparse, csv, json, math, time  # noqa: E401
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models import resnet18
from torchvision.transforms import v2

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def load(path: str, size: int = 128) -> np.ndarray:
    """Grayscale; crop to the pixels above 10% of the maximum; pad square with 0; resize. -> uint8 (size, size)."""
    g = np.asarray(Image.open(path).convert("L"))
    ys, xs = np.nonzero(g > 0.1 * g.max())
    if len(ys):
        g = g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = max(g.shape)
    sq = np.zeros((side, side), np.uint8)
    top, left = (side - g.shape[0]) // 2, (side - g.shape[1]) // 2
    sq[top : top + g.shape[0], left : left + g.shape[1]] = g
    return np.asarray(Image.fromarray(sq).resize((size, size), Image.Resampling.BILINEAR))


def load_popevit(path: str, size: int = 128, draft: bool = True) -> np.ndarray:
    """The uint8 (size, size) image popevit trains on with configs/experiments/plain_resnet18.yaml."""
    from popevit.config import PreprocessConfig
    from popevit.data.decode import decode_bytes
    from popevit.data.preprocess import decode_for_model, preprocess_image

    cfg, data = PreprocessConfig(img_size=size, clip_percentiles=(0, 100)), Path(path).read_bytes()
    return preprocess_image(decode_for_model(data, path, cfg) if draft else decode_bytes(data, path), cfg)


LOADERS = {"plain": load, "popevit": load_popevit, "popevit-full-decode": lambda p: load_popevit(p, draft=False)}


def tensors(paths: list[str], images: str = "plain") -> torch.Tensor:
    """(N, 1, S, S) float, fixed scaling (x/255 - 0.5)/0.25: no per-image standardisation, no percentile clip."""
    x = torch.from_numpy(np.stack([LOADERS[images](p) for p in paths])).float().unsqueeze(1)
    return (x / 255 - 0.5) / 0.25


def model() -> torch.nn.Module:
    m = resnet18(num_classes=len(CLASSES))
    m.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grayscale input
    return m


@torch.inference_mode()
def proba(m: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    m.eval()
    return torch.cat([m(x[i : i + 256]).softmax(-1) for i in range(0, len(x), 256)]).double().numpy()


def write(path: Path, paths: list[str], labels: list[str], p: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *[f"p_{c}" for c in CLASSES]])
        w.writerows([q, lab, *(f"{v:.9g}" for v in row)] for q, lab, row in zip(paths, labels, p, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--external", action="append", default=[], help="NAME=FOLDER of <class>/* images")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", choices=sorted(LOADERS), default="plain", help="whose preprocessing makes the pixels")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(open(a.manifest)))
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
    t0 = time.time()
    x_tr = tensors([r["path"] for r in split["train"]], a.images)
    y_tr = torch.tensor([CLASSES.index(r["label"]) for r in split["train"]])
    counts = torch.bincount(y_tr, minlength=len(CLASSES)).float()
    weight = (1 / counts) / (1 / counts).mean()
    aug = v2.Compose([v2.RandomAffine(15, translate=(0.05, 0.05), scale=(0.9, 1.1), shear=5, fill=-2.0),
                      v2.RandomHorizontalFlip()])  # fmt: skip
    m, bs = model(), 64
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(x_tr) / bs)
    total, warm = a.epochs * steps_per_epoch, 2 * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
    )
    log = []
    for epoch in range(a.epochs):
        m.train()
        order, seen, loss_sum = torch.randperm(len(x_tr)), 0, 0.0
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            xb = torch.stack([aug(x) for x in x_tr[idx]])
            loss = F.cross_entropy(m(xb), y_tr[idx], weight=weight, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen, loss_sum = seen + len(idx), loss_sum + loss.item() * len(idx)
        log.append({"epoch": epoch, "loss": loss_sum / seen, "wall_s": round(time.time() - t0, 1)})
        print(json.dumps(log[-1]), flush=True)
    train_s = time.time() - t0
    test = split["test"]
    write(out / "test.csv", [r["path"] for r in test], [r["label"] for r in test],
          proba(m, tensors([r["path"] for r in test], a.images)))  # fmt: skip
    for item in a.external:
        name, folder = item.split("=", 1)
        files = sorted(p for p in Path(folder).glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        write(out / f"{name}.csv", [str(p) for p in files], [p.parent.name for p in files],
              proba(m, tensors([str(p) for p in files], a.images)))  # fmt: skip
    info = {"args": vars(a), "train_wall_s": round(train_s, 1), "log": log, "torch": torch.__version__}
    (out / "run.json").write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
