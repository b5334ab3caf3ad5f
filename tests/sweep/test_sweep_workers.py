"""Several workers on one study: two processes on SQLite or PostgreSQL run every grid point exactly once, and a
SIGKILLed trial is failed by its stale heartbeat and resumed from its last checkpoint on the next invocation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from sweep_tiny import TINY

from popevit.sweep import SearchSpace, SweepSpec, run_sweep

WORKER = """
import json, sys
from pathlib import Path
from popevit.sweep import SearchSpace, SweepSpec, run_sweep
a = json.loads(sys.argv[1])
space = SearchSpace.from_specs(a["grid"], [], a["seeds"])
spec = SweepSpec(None, a["sets"], space, Path(a["out"]), storage=a["storage"], study_name="shared",
                 heartbeat_s=a.get("heartbeat", 30), grace_s=a.get("grace", 120))
r = run_sweep(spec, summarize=False)
print("RESULT " + json.dumps({"trained": r.trained, "reused": r.reused, "failed": r.failed, "complete": r.complete}))
"""


def _spawn(args: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _result(proc: subprocess.Popen, timeout: float = 400) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    return json.loads(lines[-1][7:])


def _two_workers_share_one_study(phantom_root: Path, tmp_path: Path, storage: str) -> None:
    args = {
        "grid": ["optim.lr=1e-3,3e-3", "model.dropout=0.0,0.1"],
        "seeds": [0],
        "sets": [*TINY, f"data.data={phantom_root}", f"data.cache_dir={tmp_path / 'cache'}"],
        "out": str(tmp_path / "sweep"),
        "storage": storage,
    }
    a, b = _spawn(args), _spawn(args)
    ra, rb = _result(a), _result(b)
    assert ra["trained"] + rb["trained"] == 4, (ra, rb)
    assert ra["failed"] == rb["failed"] == 0
    study = optuna.load_study(study_name="shared", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    keys = [t.user_attrs["key"] for t in done]
    assert len(keys) == 4 and len(set(keys)) == 4
    others = [t for t in study.trials if t.state.name != "COMPLETE"]
    assert all("duplicate_of" in t.user_attrs for t in others)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "model.safetensors").is_file())
    assert len(runs) == 4


@pytest.mark.slow
def test_two_sqlite_workers_run_every_grid_point_exactly_once(phantom_root, tmp_path):
    _two_workers_share_one_study(phantom_root, tmp_path, f"sqlite:///{tmp_path / 'sweep.db'}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (initdb + pg_ctl, trust auth on 127.0.0.1); skips without binaries/driver."""
    pytest.importorskip("psycopg", reason="PostgreSQL driver psycopg[binary] not installed")
    bindir = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
    initdb = shutil.which("initdb") or (bindir / "initdb" if (bindir / "initdb").exists() else None)
    if initdb is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    pg_ctl = str(Path(initdb).parent / "pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="popevit-pg-"))  # not under pytest's 0700 tmp: the server user reads it
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to drop to the postgres user")
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    t0 = time.perf_counter()
    subprocess.run([*prefix, str(initdb), "-D", str(data), "-A", "trust", "-U", "sweep"], check=True,
                   capture_output=True)  # fmt: skip
    opts = f"-k {root} -p {port} -h 127.0.0.1"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    assert time.perf_counter() - t0 < 30
    yield f"postgresql://sweep@127.0.0.1:{port}/postgres"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_a_real_postgresql_server(phantom_root, tmp_path, postgres_url):
    _two_workers_share_one_study(phantom_root, tmp_path, postgres_url)


@pytest.mark.slow
def test_a_sigkilled_trial_is_failed_by_its_heartbeat_and_resumed_from_its_checkpoint(phantom_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    sets = [*TINY, "train.max_epochs=3", "train.patience=null", f"data.data={phantom_root}",
            f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    args = {"grid": ["optim.lr=1e-3"], "seeds": [0], "sets": sets, "out": str(tmp_path / "sweep"),
            "storage": storage, "heartbeat": 1, "grace": 3}  # fmt: skip
    victim = _spawn(args)
    run = tmp_path / "sweep" / "lr-0.001_seed-0"
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").is_file():
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[0][-3000:]
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (run / "val_metrics.json").exists()
    time.sleep(4)  # let the heartbeat go stale
    space = SearchSpace.from_specs(args["grid"], [], [0])
    spec = SweepSpec(None, sets, space, tmp_path / "sweep", storage=storage, study_name="shared", heartbeat_s=1,
                     grace_s=3)  # fmt: skip
    result = run_sweep(spec, summarize=False)
    assert (result.trained, result.complete) == (1, 1)
    study = optuna.load_study(study_name="shared", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].system_attrs["failed_trial"] == 0
    info = json.loads((run / "run.json").read_text())
    assert info["resumed"] is True and info["epochs"] == 3
