"""The prediction log: every served prediction, through SQLAlchemy, written by one thread.

SQLite (WAL journal, ``synchronous=NORMAL``, a busy timeout) is the default; PostgreSQL
works with a ``postgresql+psycopg://`` URL (``pip install 'dlclinic[postgres]'``). The
primary key is ``(request_id, row)`` and rows are inserted with ``ON CONFLICT DO
NOTHING``, so a client retrying a request with the same id never duplicates a row.

One writer thread owns all writes: callers :meth:`PredictionStore.submit` records and get
a :class:`concurrent.futures.Future` resolved when their transaction commits; the thread
groups whatever is queued (up to ``batch_rows`` rows, or ``max_delay`` seconds) into one
transaction. Readers (``monitor``, the checkup) use their own connections; WAL lets them
read while the writer writes. Arrays are stored as little-endian float32 bytes.

Durability: an answer is sent before its log row commits unless the server runs with
``sync_log=True``; a ``kill -9`` therefore loses at most the rows still queued (at most
``max_delay`` seconds' worth), and an orderly shutdown (:meth:`close`) loses none.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError, InputError, MissingDependencyError

__all__ = ["LoggedPredictions", "PredictionRecord", "PredictionStore", "hash_input", "store_url"]


def hash_input(x: np.ndarray) -> str:
    """SHA-256 of one input's float32 bytes and shape (the same input always hashes the same)."""
    a = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def store_url(value: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a plain file path (``log.db`` → ``sqlite:///log.db``)."""
    text = str(value)
    if "://" in text:
        if text.startswith("postgresql://"):
            text = "postgresql+psycopg://" + text[len("postgresql://") :]
        return text
    return f"sqlite:///{Path(text).absolute()}"


@dataclass(frozen=True)
class PredictionRecord:
    """One served prediction (one row of one request)."""

    request_id: str
    row: int
    created: float
    model_version: str
    latency_ms: float
    probs: np.ndarray
    input_hash: str
    inputs: np.ndarray | None = None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class LoggedPredictions:
    """Predictions read back from the log, in serving order, with fed-back labels (``-1`` = none)."""

    request_id: np.ndarray
    row: np.ndarray
    created: np.ndarray
    model_version: np.ndarray
    latency_ms: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray | None
    labels: np.ndarray
    input_hash: np.ndarray

    def __len__(self) -> int:
        return len(self.request_id)


def _f32(a: np.ndarray | None) -> bytes | None:
    return None if a is None else np.ascontiguousarray(np.asarray(a, dtype="<f4")).tobytes()


_STOP = object()


class PredictionStore:
    """A prediction log behind one writer thread.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://...``) or a file path.
        batch_rows: most rows per write transaction.
        max_delay: seconds the writer waits to fill a transaction.

    Example:
        >>> store = PredictionStore("predictions.db")          # doctest: +SKIP
        >>> store.submit(records).result()                       # doctest: +SKIP
        >>> store.close()                                        # doctest: +SKIP
    """

    def __init__(self, url: str | Path, *, batch_rows: int = 512, max_delay: float = 0.05) -> None:
        try:
            import sqlalchemy as sa
        except ImportError:
            raise MissingDependencyError("sqlalchemy", "serve") from None
        self.url = store_url(url)
        self.batch_rows = int(batch_rows)
        self.max_delay = float(max_delay)
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            if self.url in ("sqlite://", "sqlite:///:memory:"):
                from sqlalchemy.pool import StaticPool

                kwargs["poolclass"] = StaticPool
            else:
                Path(self.url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except ImportError as exc:
            raise MissingDependencyError(str(exc.name or "psycopg"), "postgres") from None
        except Exception as exc:
            raise ConfigError(
                f"--store {url}: expected a SQLAlchemy URL (sqlite:///file.db or postgresql://user@host/db) or a file path, found an unusable one ({type(exc).__name__}: {exc})"
            ) from None
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"--store {url}: expected SQLite or PostgreSQL, found {self.dialect}")
        if self.dialect == "sqlite":
            from sqlalchemy import event

            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

        meta = sa.MetaData()
        self.predictions = sa.Table(
            "predictions",
            meta,
            sa.Column("request_id", sa.String(64), primary_key=True),
            sa.Column("row", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("created", sa.Float, nullable=False, index=True),
            sa.Column("model_version", sa.String(128), nullable=False),
            sa.Column("latency_ms", sa.Float, nullable=False),
            sa.Column("predicted", sa.Integer, nullable=False),
            sa.Column("confidence", sa.Float, nullable=False),
            sa.Column("n_classes", sa.Integer, nullable=False),
            sa.Column("probs", sa.LargeBinary, nullable=False),
            sa.Column("input_hash", sa.String(64), nullable=False),
            sa.Column("input_shape", sa.String(64), nullable=True),
            sa.Column("inputs", sa.LargeBinary, nullable=True),
            sa.Column("embedding", sa.LargeBinary, nullable=True),
        )
        self.feedback = sa.Table(
            "feedback",
            meta,
            sa.Column("request_id", sa.String(64), primary_key=True),
            sa.Column("row", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("label", sa.Integer, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
        )
        try:
            meta.create_all(self.engine)
        except ImportError as exc:
            raise MissingDependencyError(str(exc.name or "psycopg"), "postgres") from None
        except Exception as exc:
            raise ConfigError(
                f"--store {self.url.split('@')[-1]}: could not open the prediction log ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.written = 0
        self.errors = 0

    # -- writing ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._closed:
                raise InputError("the prediction log is closed; expected writes before close()")
            if self._thread is None:
                self._thread = threading.Thread(target=self._writer, name="dlclinic-log-writer", daemon=True)
                self._thread.start()

    def submit(self, records: Sequence[PredictionRecord]) -> Future[int]:
        """Queue prediction records; the future resolves (rows handed to the DB) on commit."""
        rows = [self._prediction_row(r) for r in records]
        return self._enqueue("predictions", rows)

    def submit_feedback(self, items: Sequence[tuple[str, int, int]]) -> Future[int]:
        """Queue ``(request_id, row, label)`` feedback; the first label given for a row is kept."""
        now = time.time()
        rows = [{"request_id": str(r), "row": int(i), "label": int(lab), "created": now} for r, i, lab in items]
        return self._enqueue("feedback", rows)

    def write(self, records: Sequence[PredictionRecord], timeout: float = 30.0) -> int:
        """Submit and wait for the commit."""
        return self.submit(records).result(timeout)

    def _enqueue(self, table: str, rows: list[dict[str, Any]]) -> Future[int]:
        self._ensure_thread()
        fut: Future[int] = Future()
        self._queue.put((table, rows, fut))
        return fut

    @staticmethod
    def _prediction_row(r: PredictionRecord) -> dict[str, Any]:
        p = np.asarray(r.probs, dtype=np.float32).reshape(-1)
        return {
            "request_id": str(r.request_id),
            "row": int(r.row),
            "created": float(r.created),
            "model_version": str(r.model_version)[:128],
            "latency_ms": float(r.latency_ms),
            "predicted": int(p.argmax()),
            "confidence": float(p.max()),
            "n_classes": int(p.size),
            "probs": _f32(p),
            "input_hash": r.input_hash,
            "input_shape": None if r.inputs is None else ",".join(str(s) for s in np.shape(r.inputs)),
            "inputs": _f32(r.inputs),
            "embedding": _f32(r.embedding),
        }

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        tab = self.predictions if table == "predictions" else self.feedback
        stmt = insert(tab).on_conflict_do_nothing(index_elements=["request_id", "row"])
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def _writer(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            items = [item]
            n_rows = len(item[1])
            deadline = time.monotonic() + self.max_delay
            while n_rows < self.batch_rows:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                items.append(nxt)
                n_rows += len(nxt[1])
            self._commit(items)

    def _commit(self, items: list[tuple[str, list[dict[str, Any]], Future[int]]]) -> None:
        by_table: dict[str, list[dict[str, Any]]] = {}
        for table, rows, _ in items:
            by_table.setdefault(table, []).extend(rows)
        error: BaseException | None = None
        for attempt in range(5):
            try:
                for table in ("predictions", "feedback"):
                    if by_table.get(table):
                        self._insert(table, by_table[table])
                error = None
                break
            except Exception as exc:  # locked database, lost connection: retry with backoff
                error = exc
                time.sleep(0.05 * 2**attempt)
        for _, rows, fut in items:
            if error is None:
                fut.set_result(len(rows))
            else:
                fut.set_exception(error)
        if error is None:
            self.written += sum(len(rows) for table, rows, _f in items if table == "predictions")
        else:
            self.errors += sum(len(r) for _, r, _ in items)
            warnings.warn(
                f"prediction log: {sum(len(r) for _, r, _ in items)} row(s) could not be written ({type(error).__name__}: {error})",
                RuntimeWarning,
                stacklevel=1,
            )

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far is committed."""
        if self._thread is None:
            return
        self._enqueue("predictions", []).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the writer thread and release the connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
        self.engine.dispose()

    # -- reading ---------------------------------------------------------------------------
    def count(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.predictions)).scalar_one())

    def read(
        self,
        *,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> LoggedPredictions:
        """Predictions in serving order (time, then request id and row), with fed-back labels joined."""
        import sqlalchemy as sa

        p, f = self.predictions, self.feedback
        q = sa.select(
            p.c.request_id,
            p.c.row,
            p.c.created,
            p.c.model_version,
            p.c.latency_ms,
            p.c.n_classes,
            p.c.probs,
            p.c.embedding,
            p.c.input_hash,
            f.c.label,
        ).select_from(p.outerjoin(f, sa.and_(p.c.request_id == f.c.request_id, p.c.row == f.c.row)))
        if model_version is not None:
            q = q.where(p.c.model_version == model_version)
        if since is not None:
            q = q.where(p.c.created >= since)
        if until is not None:
            q = q.where(p.c.created < until)
        q = q.order_by(p.c.created, p.c.request_id, p.c.row)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        k = int(rows[0].n_classes) if rows else 0
        probs = (
            np.stack([np.frombuffer(r.probs, dtype="<f4") for r in rows]).astype(np.float32)
            if rows
            else np.zeros((0, k), np.float32)
        )
        emb = None
        if rows and all(r.embedding is not None for r in rows):
            emb = np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows]).astype(np.float32)
        return LoggedPredictions(
            request_id=np.array([r.request_id for r in rows], dtype=object),
            row=np.array([r.row for r in rows], dtype=np.int64),
            created=np.array([r.created for r in rows], dtype=np.float64),
            model_version=np.array([r.model_version for r in rows], dtype=object),
            latency_ms=np.array([r.latency_ms for r in rows], dtype=np.float64),
            probs=probs,
            embeddings=emb,
            labels=np.array([-1 if r.label is None else r.label for r in rows], dtype=np.int64),
            input_hash=np.array([r.input_hash for r in rows], dtype=object),
        )

    def integrity_check(self) -> dict[str, Any]:
        """Database integrity (SQLite ``PRAGMA integrity_check``), duplicate keys and corrupt rows.

        A row is corrupt when its probability bytes do not hold ``n_classes`` finite values
        summing to 1 (± 1e-3) or its stored confidence disagrees with them.
        """
        import sqlalchemy as sa

        p = self.predictions
        out: dict[str, Any] = {}
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                out["database"] = str(conn.exec_driver_sql("PRAGMA integrity_check").scalar_one())
            else:
                out["database"] = "ok"
            dup = conn.execute(
                sa.select(sa.func.count()).select_from(
                    sa.select(p.c.request_id, p.c.row)
                    .group_by(p.c.request_id, p.c.row)
                    .having(sa.func.count() > 1)
                    .subquery()
                )
            ).scalar_one()
            corrupt = 0
            total = 0
            for r in conn.execute(sa.select(p.c.n_classes, p.c.probs, p.c.confidence)):
                total += 1
                v = (
                    np.frombuffer(r.probs, dtype="<f4")
                    if r.probs is not None and len(r.probs) % 4 == 0
                    else np.zeros(0)
                )
                if (
                    v.size != r.n_classes
                    or not np.all(np.isfinite(v))
                    or abs(float(v.sum()) - 1.0) > 1e-3
                    or abs(float(v.max()) - r.confidence) > 1e-5
                ):
                    corrupt += 1
        out.update({"rows": total, "duplicate_keys": int(dup), "corrupt_rows": corrupt})
        out["ok"] = out["database"] == "ok" and not dup and not corrupt
        return out
