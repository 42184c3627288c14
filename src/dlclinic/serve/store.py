"""The prediction log: every served prediction, through SQLAlchemy, written by one thread.

SQLite (WAL journal, a busy timeout) is the default; PostgreSQL works with a
``postgresql+psycopg://`` URL (``pip install 'dlclinic[postgres]'``). The primary key of
``predictions`` is ``(request_id, row)``; ``prediction_requests`` holds one row per request id
with the SHA-256 of its payload (:func:`payload_hash`), so a retried request is logged once
and a request id reused for a different payload is refused (:class:`RequestConflict`).

One writer thread owns all writes: callers :meth:`PredictionStore.submit` one request's records
and get a :class:`concurrent.futures.Future` resolved when their transaction commits. The thread
commits whatever is queued (up to ``batch_rows`` rows, waiting at most ``max_delay`` seconds for
more) in one transaction: group commit, one fsync for every request waiting. A job is atomic (all
its rows or none); when a group's transaction fails for a reason other than a busy or lost
database, each job is retried in a transaction of its own, so one bad row never takes other
clients' rows down with it. Readers (``monitor``, the checkup) use their own connections; WAL
lets them read while the writer writes. Arrays are stored as little-endian float32 bytes.

Durability: with ``durable=True`` (the default) SQLite runs ``synchronous=FULL`` and PostgreSQL
``synchronous_commit=on``: a resolved future means the rows are on disk, and the server answers
only then. ``durable=False`` (``dlclinic serve --log-mode async``) keeps ``synchronous=NORMAL`` /
``synchronous_commit=off`` and the server answers before the commit: faster, and a ``kill -9``
loses the rows still queued (at most ``max_delay`` seconds' worth).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.database import with_driver
from dlclinic.core.errors import ConfigError, InputError, MissingDependencyError

__all__ = [
    "LoggedPredictions",
    "LoggedRequest",
    "PredictionRecord",
    "PredictionStore",
    "RequestConflict",
    "hash_input",
    "is_transient_error",
    "payload_hash",
    "store_url",
]


def hash_input(x: np.ndarray) -> str:
    """SHA-256 of one input's float32 bytes and shape (the same input always hashes the same)."""
    a = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def payload_hash(input_hashes: Sequence[str]) -> str:
    """SHA-256 of a request's row hashes in row order: what an idempotency key is checked against."""
    h = hashlib.sha256(f"{len(input_hashes)} rows".encode())
    for value in input_hashes:
        h.update(value.encode())
    return h.hexdigest()


def store_url(value: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a plain file path (``log.db`` → ``sqlite:///log.db``)."""
    text = str(value)
    if "://" in text:
        return with_driver(text)
    return f"sqlite:///{Path(text).absolute()}"


class RequestConflict(InputError):
    """A request id already logged for a different payload (the server answers 409)."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(
            f"request_id {request_id!r} was already used for a different payload; expected a new id for new inputs"
        )


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


@dataclass(frozen=True)
class LoggedRequest:
    """One logged request, as :meth:`PredictionStore.find_request` reads it back (to replay its answer)."""

    request_id: str
    payload_hash: str
    model_version: str
    latency_ms: float
    probs: np.ndarray


@dataclass
class _Job:
    """One :meth:`PredictionStore.submit`: rows committed together or not at all."""

    table: str
    rows: list[dict[str, Any]]
    future: Future[int]
    requests: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # id -> (payload hash, rows, created)


def _f32(a: np.ndarray | None) -> bytes | None:
    return None if a is None else np.ascontiguousarray(np.asarray(a, dtype="<f4")).tobytes()


def is_transient_error(exc: BaseException) -> bool:
    """A busy, locked or unreachable database (worth retrying), not a row the database refuses."""
    import sqlalchemy.exc as sa_exc

    return isinstance(exc, sa_exc.OperationalError) or bool(getattr(exc, "connection_invalidated", False))


_STOP = object()


class PredictionStore:
    """A prediction log behind one writer thread.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://...``) or a file path.
        batch_rows: most rows per write transaction.
        max_delay: seconds the writer waits for more requests before committing a group
            (default 2 ms when durable, 50 ms otherwise).
        durable: a commit is on disk before its future resolves (SQLite ``synchronous=FULL``,
            PostgreSQL ``synchronous_commit=on``); ``False`` trades that for speed.

    Example:
        >>> store = PredictionStore("predictions.db")          # doctest: +SKIP
        >>> store.submit(records).result()                       # doctest: +SKIP
        >>> store.close()                                        # doctest: +SKIP
    """

    def __init__(
        self, url: str | Path, *, batch_rows: int = 512, max_delay: float | None = None, durable: bool = True
    ) -> None:
        self.url = store_url(url)
        self.batch_rows = int(batch_rows)
        self.durable = bool(durable)
        self.max_delay = float(max_delay if max_delay is not None else (0.002 if durable else 0.05))
        self.engine = self._engine(url)
        self.dialect = self.engine.dialect.name
        self._tables(url)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.written = 0
        self.errors = 0
        self.conflicts = 0

    def _engine(self, url: str | Path) -> Any:
        """The SQLAlchemy engine, with SQLite's pragmas or PostgreSQL's commit mode set on every connection."""
        try:
            import sqlalchemy as sa
        except ImportError:
            raise MissingDependencyError("sqlalchemy", "serve") from None
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            if self.url in ("sqlite://", "sqlite:///:memory:"):
                from sqlalchemy.pool import StaticPool

                kwargs["poolclass"] = StaticPool
            else:
                Path(self.url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            engine = sa.create_engine(self.url, **kwargs)
        except ImportError as exc:
            raise MissingDependencyError(str(exc.name or "psycopg"), "postgres") from None
        except Exception as exc:
            raise ConfigError(
                f"--store {url}: expected a SQLAlchemy URL (sqlite:///file.db or postgresql://user@host/db) or a file path, found an unusable one ({type(exc).__name__}: {exc})"
            ) from None
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(f"--store {url}: expected SQLite or PostgreSQL, found {engine.dialect.name}")
        sqlite, durable = engine.dialect.name == "sqlite", self.durable

        @sa.event.listens_for(engine, "connect")
        def _session(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if sqlite:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                cur.execute("PRAGMA busy_timeout=30000")
            else:
                cur.execute(f"SET synchronous_commit TO {'on' if durable else 'off'}")
                dbapi_conn.commit()
            cur.close()

        return engine

    def _tables(self, url: str | Path) -> None:
        """Declare the three tables and create the missing ones."""
        import sqlalchemy as sa

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
        self.requests = sa.Table(
            "prediction_requests",
            meta,
            sa.Column("request_id", sa.String(64), primary_key=True),
            sa.Column("payload_hash", sa.String(64), nullable=False),
            sa.Column("rows", sa.Integer, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
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

    # -- writing ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._closed:
                raise InputError("the prediction log is closed; expected writes before close()")
            if self._thread is None:
                self._thread = threading.Thread(target=self._writer, name="dlclinic-log-writer", daemon=True)
                self._thread.start()

    def submit(self, records: Sequence[PredictionRecord]) -> Future[int]:
        """Queue one request's records (all its rows); the future resolves on commit.

        Raises :class:`~dlclinic.core.errors.InputError` at once for a row that cannot be logged
        (non-finite probabilities); the future fails with :class:`RequestConflict` when a request id
        is already logged for a different payload, and a request logged before is not logged again.
        """
        rows = [self._prediction_row(r) for r in records]
        hashes: dict[str, dict[int, str]] = {}
        created: dict[str, float] = {}
        for r in rows:
            hashes.setdefault(r["request_id"], {})[r["row"]] = r["input_hash"]
            created.setdefault(r["request_id"], r["created"])
        requests = {
            rid: (payload_hash([by_row[i] for i in sorted(by_row)]), len(by_row), created[rid])
            for rid, by_row in hashes.items()
        }
        return self._enqueue(_Job("predictions", rows, Future(), requests))

    def submit_feedback(self, items: Sequence[tuple[str, int, int]]) -> Future[int]:
        """Queue ``(request_id, row, label)`` feedback; the first label given for a row is kept."""
        now = time.time()
        rows = [{"request_id": str(r), "row": int(i), "label": int(lab), "created": now} for r, i, lab in items]
        return self._enqueue(_Job("feedback", rows, Future()))

    def write(self, records: Sequence[PredictionRecord], timeout: float = 30.0) -> int:
        """Submit and wait for the commit."""
        return self.submit(records).result(timeout)

    def _enqueue(self, job: _Job) -> Future[int]:
        self._ensure_thread()
        self._queue.put(job)
        return job.future

    @staticmethod
    def _prediction_row(r: PredictionRecord) -> dict[str, Any]:
        p = np.asarray(r.probs, dtype=np.float32).reshape(-1)
        if p.size == 0 or not np.all(np.isfinite(p)):
            raise InputError(
                f"prediction log: request {r.request_id!r} row {r.row}: expected finite probabilities, found {p.tolist()[:4]}"
            )
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

    def _insert(self, conn: Any, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        conn.execute(insert(table).on_conflict_do_nothing(index_elements=keys), rows)

    def _transaction(self, jobs: list[_Job]) -> list[int | BaseException]:
        """Commit ``jobs`` in one transaction; a job whose request id is taken by another payload is left out.

        The request rows go in first (which takes SQLite's write lock, and waits on PostgreSQL for a
        concurrent insert of the same id), then the stored payload hashes decide which jobs go in.
        """
        import sqlalchemy as sa

        first: dict[str, tuple[str, int, float]] = {}
        for job in jobs:
            for rid, meta in job.requests.items():
                first.setdefault(rid, meta)
        outcomes: list[int | BaseException] = []
        with self.engine.begin() as conn:
            stored: dict[str, str] = {}
            if first:
                rows = [{"request_id": k, "payload_hash": h, "rows": n, "created": t} for k, (h, n, t) in first.items()]
                self._insert(conn, self.requests, rows, ["request_id"])
                ids, r = list(first), self.requests
                for i in range(0, len(ids), 500):
                    q = sa.select(r.c.request_id, r.c.payload_hash).where(r.c.request_id.in_(ids[i : i + 500]))
                    stored.update({k: h for k, h in conn.execute(q).all()})
            kept: dict[str, list[dict[str, Any]]] = {"predictions": [], "feedback": []}
            for job in jobs:
                clash = [rid for rid, meta in job.requests.items() if stored.get(rid) != meta[0]]
                if clash:
                    outcomes.append(RequestConflict(clash[0]))
                    continue
                kept[job.table].extend(job.rows)
                outcomes.append(len(job.rows))
            for name, table in (("predictions", self.predictions), ("feedback", self.feedback)):
                if kept[name]:
                    self._insert(conn, table, kept[name], ["request_id", "row"])
        return outcomes

    def _with_retries(self, jobs: list[_Job]) -> list[int | BaseException]:
        """:meth:`_transaction`, retried with backoff while the database is busy or unreachable."""
        for attempt in range(5):
            try:
                return self._transaction(jobs)
            except Exception as exc:
                if not is_transient_error(exc) or attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _writer(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            jobs = [item]
            n_rows = len(item.rows)
            deadline = time.monotonic() + self.max_delay
            while n_rows < self.batch_rows:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                jobs.append(nxt)
                n_rows += len(nxt.rows)
            self._commit(jobs)

    def _commit(self, jobs: list[_Job]) -> None:
        """Group commit; when the group fails on a row (not a busy database), each job alone."""
        try:
            outcomes = self._with_retries(jobs)
        except Exception as exc:
            if len(jobs) == 1 or is_transient_error(exc):
                outcomes = [exc] * len(jobs)
            else:
                outcomes = []
                for job in jobs:
                    try:
                        outcomes.extend(self._with_retries([job]))
                    except Exception as alone:
                        outcomes.append(alone)
        failed, error = 0, None
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
                if isinstance(outcome, RequestConflict):
                    self.conflicts += 1
                else:
                    failed += len(job.rows)
                    error = outcome
            else:
                job.future.set_result(outcome)
                self.written += outcome if job.table == "predictions" else 0
        if failed:
            self.errors += failed
            warnings.warn(
                f"prediction log: {failed} row(s) could not be written ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
                RuntimeWarning,
                stacklevel=1,
            )

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far is committed."""
        if self._thread is None:
            return
        self._enqueue(_Job("predictions", [], Future())).result(timeout)

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

    def find_request(self, request_id: str) -> LoggedRequest | None:
        """The logged request with this id (its payload hash and logged answer), or ``None``."""
        import sqlalchemy as sa

        p, r = self.predictions, self.requests
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(r.c.payload_hash).where(r.c.request_id == request_id)).first()
            rows = conn.execute(
                sa.select(p.c.row, p.c.probs, p.c.model_version, p.c.latency_ms, p.c.input_hash)
                .where(p.c.request_id == request_id)
                .order_by(p.c.row)
            ).all()
        if found is None and not rows:
            return None
        return LoggedRequest(
            request_id=request_id,
            payload_hash=found.payload_hash if found is not None else payload_hash([x.input_hash for x in rows]),
            model_version=rows[0].model_version if rows else "",
            latency_ms=float(rows[0].latency_ms) if rows else 0.0,
            probs=np.stack([np.frombuffer(x.probs, dtype="<f4") for x in rows]) if rows else np.zeros((0, 0)),
        )

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
        """Database integrity (SQLite ``PRAGMA integrity_check``), duplicate keys, corrupt rows, mixed requests.

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
            mixed = self._mixed_requests(conn)
        out.update({"rows": total, "duplicate_keys": int(dup), "corrupt_rows": corrupt, "mixed_requests": mixed})
        out["ok"] = out["database"] == "ok" and not dup and not corrupt and not mixed
        return out

    def _mixed_requests(self, conn: Any) -> int:
        """Requests whose logged rows are not exactly rows ``0…n-1`` of their request entry."""
        import sqlalchemy as sa

        p, r = self.predictions, self.requests
        per = (
            sa.select(p.c.request_id, sa.func.count().label("n"), sa.func.max(p.c.row).label("last"))
            .group_by(p.c.request_id)
            .subquery()
        )
        q = (
            sa.select(sa.func.count())
            .select_from(r.join(per, per.c.request_id == r.c.request_id))
            .where(sa.or_(per.c.n != r.c.rows, per.c.last != r.c.rows - 1))
        )
        return int(conn.execute(q).scalar_one())
