"""Where a sweep's Optuna study lives: the RDB storage (SQLite by default, PostgreSQL for several machines).

Heartbeats let a live worker fail and retry a trial whose worker was killed; the URL is shown without its password
in every message, log and summary (:func:`redact`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc


def default_storage(out: Path) -> str:
    """``sqlite:///OUT/sweep.db`` (absolute), the storage of a sweep on one machine."""
    return f"sqlite:///{out.resolve() / 'sweep.db'}"


def open_storage(url: str, heartbeat_s: int = 30, grace_s: int = 120) -> optuna.storages.RDBStorage:
    """Optuna RDB storage with heartbeats (killed trials are failed after ``grace_s``) and retries of stale trials.

    Args:
        url: SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql://user:password@host:5432/db``.
        heartbeat_s: how often a running trial touches the storage.
        grace_s: age of the last heartbeat after which a running trial counts as killed.

    Returns:
        The storage. PostgreSQL needs a driver: ``psycopg[binary]`` for ``postgresql://`` (SQLAlchemy 2's
        default), ``psycopg2-binary`` for ``postgresql+psycopg2://``.
    """
    if grace_s <= heartbeat_s:
        raise ValueError(f"grace period ({grace_s} s) must exceed the heartbeat interval ({heartbeat_s} s)")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for another worker's write instead of failing
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        for attempt in range(3):
            try:
                with quiet_experimental():
                    return optuna.storages.RDBStorage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=heartbeat_s,
                        grace_period=grace_s,
                        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                    )
            except sqlalchemy.exc.SQLAlchemyError:
                if attempt == 2:  # workers that start together race to create the schema; the loser retries
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")
    except ImportError as err:
        raise RuntimeError(
            f"storage {redact(url)!r}: its database driver is not installed ({err}). For postgresql:// install "
            "psycopg[binary] (SQLAlchemy's default PostgreSQL driver), for postgresql+psycopg2:// install "
            "psycopg2-binary; or use --storage sqlite:///sweep.db on one machine"
        ) from None


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Silence Optuna's notices that heartbeats and stale-trial retries are 'experimental' (stable since v2.8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url
