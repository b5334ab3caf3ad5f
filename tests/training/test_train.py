"""Training engine: run folder, exact resume after SIGKILL, refusal of changed configs, DDP metric sync, faults."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from popevit.config import dump_config, load_config
from popevit.evaluation.plots import read_metrics_csv
from popevit.training import RunDirError, train
from popevit.training.optim import param_groups, warmup_cosine
from popevit.training.rundir import prepare_run_dir

TINY = [
    "model.name=vit_p8_w32_d2",
    "model.pos_enc=pope",
    "data.preprocess.img_size=32",
    "data.batch_size=8",
    "optim.warmup_epochs=1",
    "train.progress_bar=false",
    "train.threads=1",
]


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "popevit.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _train_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    sets = [*TINY, f"train.max_epochs={epochs}", "train.patience=null", *extra]
    return ["train", "--data", str(data), "--out", str(out), *[a for s in sets for a in ("--set", s)]]


def test_run_folder_has_config_manifest_checkpoints_logs_and_portable_model(phantom_root, tmp_path):
    from popevit.artifact import load_artifact

    cfg = load_config(None, [*TINY, "train.max_epochs=2", f"data.data={phantom_root}"])
    result = train(cfg, tmp_path / "run")
    run = result.out_dir
    for name in (
        "config.yaml",
        "run.json",
        "manifest.csv",
        "model.safetensors",
        "model.json",
        "val_metrics.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "logs/csv/metrics.csv",
    ):
        assert (run / name).is_file(), name
    assert load_config(run / "config.yaml") == cfg
    info = json.loads((run / "run.json").read_text())
    assert info["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert len(info["manifest_sha256"]) == 64 and info["epochs"] == 2
    n_train = (run / "manifest.csv").read_text().count(",train,")
    assert info["images_seen"] == 2 * n_train and info["hit_time_cap"] is False
    assert info["final_lr"] == pytest.approx(0.0, abs=1e-12), "an uncapped run ends its cosine at min_lr_ratio = 0"
    model, meta = load_artifact(run)
    assert meta.classes == info["classes"] and meta.preprocess.img_size == 32
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 4)
    for key in ("val/acc", "val/bacc", "val/auroc_macro", "val/f1_macro", "val/loss", "val/auroc_glioma"):
        assert key in result.val_metrics
    with pytest.raises(RunDirError, match="already holds a run"):
        train(cfg, run)


def test_last_checkpoint_is_the_last_epoch_even_when_validation_stopped_improving(phantom_root, tmp_path):
    # best.ckpt's save_last would leave last.ckpt at the best epoch (epoch 3 of 12 here), and --resume would replay
    # every epoch since
    cfg = load_config(None, [*TINY, "train.max_epochs=12", f"data.data={phantom_root}", "train.patience=null"])
    run = train(cfg, tmp_path / "run").out_dir
    last, best = (torch.load(run / "checkpoints" / n, weights_only=False) for n in ("last.ckpt", "best.ckpt"))
    assert last["epoch"] == 11, f"last.ckpt holds epoch {last['epoch']}, not the final one"
    assert best["epoch"] < 11, "the test needs a run whose best epoch is not its last"
    n_train = (run / "manifest.csv").read_text().count(",train,")
    assert last["global_step"] == 12 * -(-n_train // 8)  # every step of the 12 epochs, batch 8


def test_sigkilled_run_resumes_to_identical_weights_and_metrics(phantom_root, tmp_path):
    epochs = 5
    ref = _cli(*_train_args(phantom_root, tmp_path / "ref", epochs))
    # Kill the second run (a hard SIGKILL, no cleanup) as soon as its first epoch is on disk: last.ckpt and the epoch's
    # training loss in metrics.csv. last.ckpt is written at the end of validation, a moment before Lightning logs the
    # epoch's training metrics; a kill inside that moment loses that one training-loss row (weights, validation
    # curves and the resumed run are unaffected), so the test waits for both.
    victim = _cli(*_train_args(phantom_root, tmp_path / "b", epochs))
    last, csv_log = tmp_path / "b" / "checkpoints" / "last.ckpt", tmp_path / "b" / "logs" / "csv" / "metrics.csv"

    def first_epoch_written() -> bool:
        return last.exists() and csv_log.exists() and "train/loss_epoch" in read_metrics_csv(csv_log)

    deadline = time.monotonic() + 300
    while not first_epoch_written() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed; enlarge it"
    assert not (tmp_path / "b" / "model.json").exists()
    resumed = _cli(*_train_args(phantom_root, tmp_path / "b", epochs), "--resume")
    out_resumed, _ = resumed.communicate(timeout=600)
    out_ref, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out_ref
    assert resumed.returncode == 0, out_resumed
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ after resume: {k}"
    assert json.loads((tmp_path / "ref" / "val_metrics.json").read_text()) == json.loads(
        (tmp_path / "b" / "val_metrics.json").read_text()
    )
    info_ref, info_b = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("ref", "b"))
    assert info_b["resumed"] is True
    assert info_b["images_seen"] == info_ref["images_seen"]  # the count resumes from the checkpoint, not from 0
    # the training curves keep the epochs before the kill (Lightning's CSVLogger deletes its file on resume)
    curves_ref, curves_b = (read_metrics_csv(tmp_path / d / "logs" / "csv" / "metrics.csv") for d in ("ref", "b"))
    lr = next(k for k in curves_ref if k.startswith("lr-"))
    for key in ("val/loss", "train/loss_epoch", lr):
        assert [e for e, _ in curves_b[key]] == [e for e, _ in curves_ref[key]] == list(range(epochs)), key
    assert curves_b["val/loss"] == curves_ref["val/loss"]
    assert not (tmp_path / "b" / "logs" / "csv" / "metrics.before_resume.csv").exists()


def test_a_kill_while_the_csv_header_is_rewritten_keeps_the_earlier_rows(tmp_path, monkeypatch):
    """A new metric name makes the CSV writer rewrite metrics.csv whole (the first epoch end, just after last.ckpt).
    Lightning's own rewrite truncates the file first; a crash mid-rewrite must leave the earlier rows instead."""
    import csv

    from popevit.training.checkpoint import AtomicCSVLogger

    logger = AtomicCSVLogger(tmp_path / "logs", name="csv", version="")
    logger.log_metrics({"val/loss": 0.5, "epoch": 0}, step=9)
    logger.save()
    path = Path(logger.experiment.metrics_file_path)
    before = path.read_text()

    def crash(*_):
        raise KeyboardInterrupt  # stands for the kill: the rewrite dies after opening its output

    logger.log_metrics({"train/loss_epoch": 0.7, "epoch": 0}, step=10)
    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]  # no temp file left behind
    assert [(r["step"], r["val/loss"]) for r in csv.DictReader(path.open())] == [("9", "0.5")]


def test_resume_with_a_changed_config_is_refused_with_the_diff(phantom_root, tmp_path):
    cfg = load_config(None, [*TINY, "train.max_epochs=1", f"data.data={phantom_root}"])
    train(cfg, tmp_path / "run")
    changed = load_config(None, [*TINY, "train.max_epochs=1", "optim.lr=0.1", f"data.data={phantom_root}"])
    with pytest.raises(RunDirError, match=r"(?s)config differs.*-  lr: 0.0003.*\+  lr: 0.1"):
        train(changed, tmp_path / "run", resume=True)
    with pytest.raises(RunDirError, match="holds no popevit run"):
        train(cfg, tmp_path / "fresh", resume=True)


def test_a_resumed_run_keeps_its_init_weights_and_the_wall_time_before_it(phantom_root, tmp_path):
    from safetensors.torch import save_file

    from popevit.artifact import file_sha256

    cfg = load_config(None, [*TINY, "train.max_epochs=1", f"data.data={phantom_root}"])
    source = train(cfg, tmp_path / "a").out_dir / "model.safetensors"
    run = tmp_path / "b"
    train(cfg, run, init=source)
    assert json.loads((run / "init.json").read_text()) == {"path": str(source), "sha256": file_sha256(source)}
    first = json.loads((run / "run.json").read_text())
    assert [s["role"] for s in first["upstream"]] == ["init"] and first["wall_s_before_resume"] == 0
    (run / "run.json").unlink()  # as if killed after its last checkpoint, before its records: resumable
    train(cfg, run, resume=True)  # --init not given again: the run's record keeps it in the budget
    again = json.loads((run / "run.json").read_text())
    assert again["resumed"] is True and again["upstream"] == first["upstream"]
    # wall_s counts the first process up to its checkpoint, not only the resumed one (which trained no more here)
    assert 0 < again["wall_s_before_resume"] <= first["wall_s"] <= again["wall_s"]
    assert again["budget_wall_s"] == pytest.approx(again["wall_s"] + first["upstream"][0]["wall_s"], abs=0.02)
    (run / "run.json").unlink()
    train(cfg, run, resume=True, init=source)  # the same weights again: accepted
    other = tmp_path / "other.safetensors"
    save_file({k: v + 1 for k, v in load_file(str(source)).items()}, str(other))
    with pytest.raises(RunDirError, match=r"started from --init .*model.safetensors.*other weights"):
        train(cfg, run, resume=True, init=other)
    with pytest.raises(RunDirError, match="started without --init"):
        train(cfg, tmp_path / "a", resume=True, init=source)


def test_unusable_init_weights_are_refused_before_the_run_folder_is_made(phantom_root, tmp_path):
    from safetensors.torch import save_file

    cfg = load_config(None, [*TINY, "train.max_epochs=1", f"data.data={phantom_root}"])
    with pytest.raises(FileNotFoundError, match=r"--init weights .* not found; pass the model\.safetensors"):
        train(cfg, tmp_path / "run", init=tmp_path / "missing.safetensors")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
    alien = tmp_path / "alien.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(alien))
    with pytest.raises(ValueError, match=r"none of its 1 tensors fits ViT"):
        train(cfg, tmp_path / "run", init=alien)
    assert not (tmp_path / "run").exists()  # so the corrected command is not refused


def test_run_json_names_the_commit_the_run_started_with_its_threads_and_cpu(phantom_root, tmp_path, monkeypatch):
    from functools import lru_cache

    from popevit.training import provenance

    run = tmp_path / "run"
    head = lru_cache(maxsize=1)(lambda: "b" * 40 if (run / "checkpoints").exists() else "a" * 40)
    monkeypatch.setattr(provenance, "git_commit", head)  # HEAD "moves" once training has written a checkpoint
    train(load_config(None, [*TINY, "train.max_epochs=1", f"data.data={phantom_root}"]), run)
    info = json.loads((run / "run.json").read_text())
    assert info["git_commit"] == "a" * 40
    assert info["device"] == f"cpu (1 thread of {os.cpu_count()} cores)"  # TINY trains with train.threads=1
    assert info["cpu"]["model"] and info["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()


def test_resume_accepts_a_run_saved_before_a_config_key_existed(tmp_path):
    cfg = load_config(None, TINY)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 0, "global_step": 0, "state_dict": {}}, run / "checkpoints" / "last.ckpt")  # resumable
    older = "".join(ln for ln in dump_config(cfg).splitlines(True) if "ema_warmup" not in ln)
    (run / "config.yaml").write_text(older)  # as written before train.ema_warmup existed
    prepare_run_dir(cfg, run, resume=True)  # the missing key is at its default: not a change
    changed = load_config(None, [*TINY, "train.ema_decay=0.9", "train.ema_warmup=true"])
    with pytest.raises(RunDirError, match=r"(?s)config differs.*\+  ema_warmup: true"):
        prepare_run_dir(changed, run, resume=True)


def test_missing_data_is_a_clear_error(tmp_path):
    cfg = load_config(None, [*TINY, f"data.data={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match=r"data folder .* not found"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="--data /path/to/Training"):
        train(load_config(None, TINY), tmp_path / "run2")


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(phantom_root, tmp_path):
    from popevit.training.module import NonFiniteLossError

    # lr=1e30 without clipping blows the weights up within the second epoch.
    cfg = load_config(
        None,
        [
            *TINY,
            "train.max_epochs=6",
            "optim.lr=1e30",
            "optim.grad_clip=null",
            "optim.warmup_epochs=0",
            "optim.schedule=constant",
            f"data.data={phantom_root}",
        ],
    )
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train(cfg, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if last.exists():  # an epoch finished before the blow-up: its checkpoint must load
        torch.load(last, map_location="cpu", weights_only=True)


def test_param_groups_honour_no_weight_decay():
    from popevit.models import create_model

    model = create_model("vit_p8_w32_d2", num_classes=4, in_chans=1, img_size=32, pos_enc="learnable")
    groups = param_groups(model, 0.05)
    no_decay = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert set(model.no_weight_decay()) <= names
    assert all(p.ndim >= 2 for p in groups[0]["params"])
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0


def test_warmup_then_cosine_schedule():
    lrs = [warmup_cosine(s, total_steps=100, warmup_steps=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs[9:])), "decays monotonically"
    assert lrs[-1] < 0.01
    assert warmup_cosine(50, 100, 0, cosine=False) == 1.0


def test_a_time_clocked_schedule_follows_whichever_of_steps_and_budget_is_further():
    f = partial(warmup_cosine, total_steps=1000, warmup_steps=10, min_ratio=0.1)  # warm-up: 1% of the schedule
    assert [f(s, elapsed=0.0) for s in range(0, 1000, 7)] == [f(s) for s in range(0, 1000, 7)], "no clock, no change"
    assert f(4, elapsed=0.008) == pytest.approx(0.8) and f(4) == pytest.approx(0.5), "warm-up ends by either"
    assert f(4, elapsed=0.01) == f(10) == pytest.approx(1.0)
    assert f(100, elapsed=0.505) == pytest.approx(0.55), "half-way through the decay: half-way to min_ratio"
    assert f(100, elapsed=1.0) == f(3, elapsed=3.0) == pytest.approx(0.1) == f(1000), "ends at min_ratio by either"
    assert f(900, elapsed=0.1) == f(900), "steps further along than the clock win"


def test_ddp_on_two_cpu_processes_synchronises_metrics(phantom_root, tmp_path):
    # the time-clocked schedule broadcasts rank 0's clock at every step: a rank that skipped it would hang the run
    clock = ["optim.schedule_clock=time", "train.max_minutes=10"]
    proc = _cli(
        *_train_args(phantom_root, tmp_path / "ddp", 1, *clock),
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--set",
        "train.accelerator=cpu",
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    ranks = [json.loads((tmp_path / "ddp" / "logs" / f"rank{r}_val.json").read_text()) for r in (0, 1)]
    n_val = sum(1 for line in (tmp_path / "ddp" / "manifest.csv").read_text().splitlines()[1:] if ",val," in line)
    seen = [r["local_val_images"] for r in ranks]
    assert all(0 < s < n_val for s in seen), f"each rank validates a shard: {seen} of {n_val}"
    assert ranks[0]["metrics"] == ranks[1]["metrics"], "ranks disagree: metrics were not synchronised"


def test_cifar_dataset_trains_through_the_same_engine_offline(tmp_path):
    from popevit.artifact import load_meta
    from popevit.data.cifar import write_synthetic_cifar

    root = write_synthetic_cifar(tmp_path / "cifar", "cifar10", n_train=200, n_test=20, seed=0)
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs/experiments/cifar_vit.yaml",
        [
            f"data.data={root}",
            "data.download=false",
            "data.batch_size=16",
            "model.name=vit_p8_w32_d2",
            "train.max_epochs=1",
            "train.progress_bar=false",
            "train.threads=1",
        ],
    )
    result = train(cfg, tmp_path / "run")
    assert len(result.classes) == 10 and not (tmp_path / "run" / "manifest.csv").exists()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["manifest_sha256"] is None and info["data_stats"]["dataset"] == "cifar10"
    assert len(load_meta(tmp_path / "run").extra["channel_stats"]["mean"]) == 3


def test_runs_side_by_side_match_runs_alone_and_a_failed_run_is_named(phantom_root, tmp_path):
    from popevit.training.side_by_side import train_side_by_side

    cfgs = {s: load_config(None, [*TINY, f"data.data={phantom_root}", "train.max_epochs=1", f"train.seed={s}"])
            for s in (0, 1)}  # fmt: skip
    walls = train_side_by_side({f"s{s}": (cfg, tmp_path / f"s{s}") for s, cfg in cfgs.items()})
    assert sorted(walls) == ["s0", "s1"] and all(w > 0 for w in walls.values())
    alone = train(cfgs[1], tmp_path / "alone")  # same seed and threads in this process: the same weights
    side, solo = load_file(tmp_path / "s1" / "model.safetensors"), load_file(alone.out_dir / "model.safetensors")
    assert side.keys() == solo.keys() and all(torch.equal(side[k], solo[k]) for k in side)

    bad = load_config(None, [*TINY, f"data.data={tmp_path / 'nowhere'}"])
    with pytest.raises(RuntimeError, match=r"training broken failed: FileNotFoundError: data folder .* not found"):
        train_side_by_side({"broken": (bad, tmp_path / "broken")})


def test_runs_side_by_side_share_one_decoding_of_their_manifest(phantom_root, tmp_path):
    from popevit.data import make_split
    from popevit.data.cache import ArrayCache
    from popevit.data.manifest import read_manifest
    from popevit.training.side_by_side import decode_once

    make_split(phantom_root, tmp_path / "split.csv", seed=0, cache_dir=tmp_path / "split_cache")
    cfg = load_config(None, [*TINY, f"data.manifest={tmp_path / 'split.csv'}", f"data.cache_dir={tmp_path / 'c'}"])
    cache = ArrayCache(tmp_path / "c", cfg.data.preprocess)
    rows = read_manifest(tmp_path / "split.csv").select(None)
    assert rows and not any(cache.has(r.content_hash) for r in rows)
    missing = load_config(None, [*TINY, f"data.manifest={tmp_path / 'nowhere.csv'}"])
    decode_once([cfg, cfg, missing])  # the missing manifest is left to its run, which names it
    assert all(cache.has(r.content_hash) for r in rows)


def test_channels_last_changes_the_memory_layout_not_the_model(phantom_root, tmp_path):
    from popevit.artifact import load_artifact

    runs = {}
    for layout in ("false", "true"):
        cfg = load_config(None, [*TINY, "model.stem=res", f"data.data={phantom_root}", "train.max_epochs=1",
                                 f"train.channels_last={layout}"])  # fmt: skip
        runs[layout] = train(cfg, tmp_path / f"cl_{layout}")
    plain, cl = (load_file(runs[k].out_dir / "model.safetensors") for k in ("false", "true"))
    assert plain.keys() == cl.keys()
    assert all(torch.allclose(plain[k], cl[k], atol=1e-4) for k in plain)  # the same training, rounded otherwise
    assert any(not torch.equal(plain[k], cl[k]) for k in plain)  # ... and the layout did change the arithmetic
    model, _ = load_artifact(runs["true"].out_dir)  # the saved weights are plain contiguous tensors
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
