"""Attacks on token-id models: L2 PGD in embedding space and greedy token substitution.

Token ids are discrete, so the input-space attacks of :mod:`dlclinic.functional.attacks`
do not apply. Two threat models replace them:

* **Embedding-space PGD** (Miyato, Dai & Goodfellow 2017, "Adversarial Training Methods for
  Semi-Supervised Text Classification"; Zhu et al. 2020, "FreeLB"): a forward hook adds a
  perturbation ``δ_t`` to the output of the model's embedding layer at every real token
  (never at padding: the mask is taken from the ids the layer itself receives), each
  ``||δ_t||_2 <= ε · r`` with ``r`` the median L2 norm of the embedding rows of the ids in
  use. It bounds what a continuous attacker could do and is the space adversarial training
  works in; the vectors it reaches are not those of any real token.
* **Greedy token substitution** (HotFlip, Ebrahimi et al. 2018; the greedy search of
  Alzantot et al. 2018 / TextAttack, Morris et al. 2020): the realistic attacker changes up
  to ``budget`` real tokens of a row to ids from a given vocabulary. Candidates are ranked
  to first order: replacing the token at ``t`` with ``v`` changes the loss by about
  ``(E[v] − E[x_t]) · ∇_{e_t} L``; the best ``candidates`` pairs are then verified by a real
  forward pass and the one with the largest logit margin ``max_{c≠y} z_c − z_y`` is kept,
  until the prediction flips or the budget is spent. Padding is never touched and a
  position is changed at most once.

Written here rather than taken from TextAttack or OpenAttack: those attack strings through
a tokenizer and a word-embedding space of their own; a checkup gets only ids and a model,
and needs a batched search whose model evaluations it can count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dlclinic.core.inference import eval_mode, first_output, model_input_spec
from dlclinic.functional.attacks import AttackResult, RobustCurve
from dlclinic.functional.attribution import embedding_layer

__all__ = [
    "EmbeddingOffset",
    "SubstitutionResult",
    "embedded_width",
    "embedding_pgd",
    "embedding_pgd_delta",
    "embedding_robustness_curve",
    "greedy_substitution",
    "median_embedding_norm",
    "offset_embeddings",
    "token_vocabulary",
]

EMBEDDING_METHODS: tuple[str, ...] = ("fgm", "pgd_l2")
_SCORE_CHUNK = 1 << 24  # elements of one rows × positions × vocabulary score block


class EmbeddingOffset:
    """A forward hook that adds ``delta`` to the embedding layer's output at non-padding positions.

    ``delta`` (N×T×D, or ``None`` for no change) must have the layer output's shape. With
    ``probe`` set, a zero offset that requires grad is added instead and kept in ``probe_delta``
    (the loss gradient w.r.t. each token's embedding); the clean output is kept in ``output``.
    """

    def __init__(self, pad_id: int, dim: int) -> None:
        self.pad_id = pad_id
        self.dim = dim
        self.delta: torch.Tensor | None = None
        self.probe = False
        self.probe_delta: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def __call__(self, module: Any, inputs: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        self.output = out
        if self.probe:
            self.probe_delta = torch.zeros_like(out).requires_grad_(True)
            return out + self.probe_delta
        if self.delta is None:
            return None
        if tuple(self.delta.shape) != tuple(out.shape):
            raise ValueError(
                f"the embedding layer's output has shape {tuple(out.shape)}, expected {tuple(self.delta.shape)} "
                "(one vector per token of the N×T ids): it is called on something other than the input ids"
            )
        mask = (inputs[0] != self.pad_id).unsqueeze(-1).to(out.dtype)
        return out + self.delta.to(out.dtype) * mask


@contextmanager
def offset_embeddings(model: Any, layer: str | None = None, *, pad_id: int = 0) -> Iterator[EmbeddingOffset]:
    """Hook :class:`EmbeddingOffset` on the model's embedding layer for the block (removed after, even on error).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Flatten())
        >>> ids = torch.tensor([[1, 2, 0]]); clean = net(ids)
        >>> with offset_embeddings(net) as off:
        ...     off.delta = torch.ones(1, 3, 2)
        ...     (net(ids) - clean).round(decimals=4).tolist()  # padding (id 0) keeps its embedding
        [[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]
    """
    emb = embedding_layer(model, layer)
    offset = EmbeddingOffset(pad_id, emb.embedding_dim)
    handle = emb.register_forward_hook(offset)
    try:
        yield offset
    finally:
        handle.remove()


def embedded_width(model: Any, ids: np.ndarray, layer: str | None = None) -> int:
    """How many leading columns of a row the embedding layer embeds: ``T`` for plain N×T ids.

    A model fed packed inputs (ids followed by a mask, :mod:`dlclinic.core.inputs`) embeds
    only the first part; the attacks then act on those columns and leave the rest alone.

    Example:
        >>> embedded_width(torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Flatten()), np.ones((2, 3), np.int64))
        3
    """
    _, device = model_input_spec(model)
    with eval_mode(model), offset_embeddings(model, layer) as offset, torch.no_grad():
        first_output(model(torch.as_tensor(np.asarray(ids[:1], dtype=np.int64), device=device)))
    if offset.output is None or offset.output.dim() != 3:
        raise ValueError("the embedding layer was not called with N×T ids: no per-token vectors to perturb")
    return int(offset.output.shape[1])


def token_vocabulary(ids: np.ndarray, num_embeddings: int | None = None, pad_id: int = 0) -> np.ndarray:
    """The distinct real ids in ``ids`` (sorted; padding and ids the embedding cannot read left out).

    Example:
        >>> token_vocabulary(np.array([[3, 1, 0], [3, 9, 0]]), num_embeddings=5).tolist()
        [1, 3]
    """
    vocab = np.unique(np.asarray(ids))
    keep = vocab != pad_id
    if num_embeddings is not None:
        keep &= (vocab >= 0) & (vocab < num_embeddings)
    return np.asarray(vocab[keep], dtype=np.int64)


def median_embedding_norm(model: Any, ids: np.ndarray, layer: str | None = None, *, pad_id: int = 0) -> float:
    """Median L2 norm of the embedding rows of the distinct real ids in ``ids``: the unit of ε in embedding space.

    Raises:
        ValueError: no real id, or every used row is the zero vector.
    """
    emb = embedding_layer(model, layer)
    vocab = token_vocabulary(ids, emb.num_embeddings, pad_id)
    if not len(vocab):
        raise ValueError("no real token (every id is padding or beyond the embedding table)")
    with torch.no_grad():
        norms = emb.weight[torch.as_tensor(vocab, device=emb.weight.device)].float().norm(dim=1)
    r = float(norms.median())
    if not r > 0:
        raise ValueError("the embedding rows of the ids in use are all zero: no scale for ε")
    return r


def _per_token(v: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each token's vector (N×T×1), floored away from 0."""
    return v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def embedding_pgd_delta(
    model: Any,
    offset: EmbeddingOffset,
    ids: torch.Tensor,
    y: torch.Tensor,
    *,
    radius: float,
    steps: int,
    step_size: float | None = None,
    early_stop: bool = True,
    generator: torch.Generator | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of L2 PGD in embedding space: ``(delta N×T×D, fooled N)``, ``||delta_t|| <= radius`` per token.

    Steps follow the per-token normalised gradient (size ``step_size``, default ``2.5 radius /
    steps``, Madry et al.); a random start in each token's ball when ``generator`` is given.
    Padding positions stay 0. ``offset`` must be hooked on the model (:func:`offset_embeddings`);
    ``width``: the embedded leading columns (:func:`embedded_width`; default all).
    """
    offset.delta = None
    embedded = ids[:, :width] if width is not None else ids
    delta = torch.zeros((*embedded.shape, offset.dim), device=ids.device)
    real = (embedded != offset.pad_id).unsqueeze(-1).to(delta.dtype)
    if generator is not None:
        z = torch.randn(delta.shape, generator=generator).to(delta.device)
        u = torch.rand((*delta.shape[:-1], 1), generator=generator).to(delta.device)
        delta = z / _per_token(z) * u * radius * real
    alpha = step_size if step_size is not None else 2.5 * radius / max(steps, 1)
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    for _ in range(steps):
        active = torch.nonzero(~done).flatten() if early_stop else torch.arange(len(ids), device=ids.device)
        if not len(active):
            break
        d = delta[active].clone().requires_grad_(True)
        offset.delta = d
        loss = torch.nn.functional.cross_entropy(first_output(model(ids[active])), y[active], reduction="sum")
        (grad,) = torch.autograd.grad(loss, d)
        with torch.no_grad():
            step = d + alpha * grad / _per_token(grad)
            step = step * torch.clamp(radius / _per_token(step), max=1.0) * real[active]
            offset.delta = step
            fooled = first_output(model(ids[active])).argmax(1) != y[active]
            delta[active] = step
            done[active] = fooled
    offset.delta = None
    return delta, done


def embedding_pgd(
    model: Any,
    ids: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    radius: float,
    steps: int = 5,
    one_step: bool = False,
    layer: str | None = None,
    pad_id: int = 0,
    batch_size: int = 256,
) -> AttackResult:
    """L2 PGD (or one fast-gradient step, ``one_step``) in embedding space on ``(ids, y)``.

    Args:
        model: an ``nn.Module`` over N×T int64 ids with an ``nn.Embedding`` layer.
        ids: token ids (``pad_id`` = padding), ``y``: labels.
        epsilon: the per-token budget in units of ``radius`` (``||δ_t||_2 <= ε·radius``).
        radius: the unit, e.g. :func:`median_embedding_norm`.
        steps: PGD iterations (ignored with ``one_step``: one step of size ε·radius, "FGM").
        layer: name of the embedding module (default the first ``nn.Embedding``).

    Returns:
        An :class:`~dlclinic.functional.attacks.AttackResult` (``x_adv`` is ``None``: the
        adversarial points are embeddings, not ids).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Embedding(6, 2), torch.nn.Flatten(), torch.nn.Linear(6, 2))
        >>> ids = np.array([[1, 2, 0]] * 4); y = np.zeros(4, dtype=int)
        >>> int(embedding_pgd(net, ids, y, epsilon=0.0, radius=1.0).fooled.sum())
        0
    """
    _, device = model_input_spec(model)
    n = len(ids)
    clean = np.zeros(n, dtype=bool)
    fooled = np.zeros(n, dtype=bool)
    r = float(epsilon) * float(radius)
    with eval_mode(model), offset_embeddings(model, layer, pad_id=pad_id) as offset:
        for start in range(0, n, batch_size):
            xb = torch.as_tensor(np.asarray(ids[start : start + batch_size], dtype=np.int64), device=device)
            yb = torch.as_tensor(np.asarray(y[start : start + batch_size], dtype=np.int64), device=device)
            with torch.no_grad():
                ok = first_output(model(xb)).argmax(1) == yb
            assert offset.output is not None
            width = int(offset.output.shape[1])  # the embedded columns (all, unless inputs are packed)
            clean[start : start + len(xb)] = ok.cpu().numpy()
            idx = torch.nonzero(ok).flatten()
            if r <= 0 or not len(idx):
                continue
            _, done = embedding_pgd_delta(
                model,
                offset,
                xb[idx],
                yb[idx],
                radius=r,
                steps=1 if one_step else steps,
                step_size=r if one_step else None,
                width=width,
            )
            fooled[start + idx.cpu().numpy()] = done.cpu().numpy()
    return AttackResult(
        method="fgm" if one_step else "pgd_l2", epsilon=float(epsilon), clean_correct=clean, fooled=fooled, x_adv=None
    )


def embedding_robustness_curve(
    model: Any,
    ids: np.ndarray,
    y: np.ndarray,
    epsilons: Sequence[float],
    *,
    radius: float,
    steps: int = 5,
    layer: str | None = None,
    pad_id: int = 0,
) -> RobustCurve:
    """Robust accuracy under embedding-space FGM (one step) and L2 PGD at every ε.

    A point found inside the ε ball lies inside every larger ball, so a row fooled at one ε
    counts as fooled at every larger ε: the curves never rise (the attack at a larger ε,
    run from zero, can miss what a smaller one found).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Embedding(6, 2), torch.nn.Flatten(), torch.nn.Linear(6, 2))
        >>> ids = np.array([[1, 2, 0]] * 4); y = np.zeros(4, dtype=int)
        >>> embedding_robustness_curve(net, ids, y, [0.0, 0.5], radius=1.0).robust_accuracy["pgd_l2"].shape
        (2,)
    """
    eps = tuple(sorted(float(e) for e in epsilons))
    rob: dict[str, np.ndarray] = {}
    succ: dict[str, np.ndarray] = {}
    clean_acc = float("nan")
    for m in EMBEDDING_METHODS:
        fooled = np.zeros(len(ids), dtype=bool)
        ra, sr = [], []
        for e in eps:
            res = embedding_pgd(
                model, ids, y, epsilon=e, radius=radius, steps=steps, one_step=m == "fgm", layer=layer, pad_id=pad_id
            )
            fooled |= res.fooled
            clean_acc = res.clean_accuracy
            n_ok = int(res.clean_correct.sum())
            ra.append(float((res.clean_correct & ~fooled).mean()))
            sr.append(float(fooled.sum() / n_ok) if n_ok and e > 0 else 0.0)
        rob[m], succ[m] = np.asarray(ra), np.asarray(sr)
    return RobustCurve(epsilons=eps, clean_accuracy=clean_acc, n=len(ids), robust_accuracy=rob, success_rate=succ)


@dataclass(frozen=True)
class SubstitutionResult(AttackResult):
    """Greedy token substitution: per-row outcome, an :class:`~dlclinic.functional.attacks.AttackResult`.

    ``method`` is ``"substitution"`` and ``epsilon`` the ``budget`` argument; ``budget``:
    substitutions allowed per row; ``substitutions``: made per row (on fooled rows, the
    number that flipped it); ``evaluations``: rows passed through the model in all (clean
    predictions, gradient passes and verified candidates); ``x_adv``: the ids after the
    attack (clean rows where it did not apply).
    """

    budget: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    substitutions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    evaluations: int = 0


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{c≠y} z_c − z_y`` per row (> 0: misclassified)."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], float("-inf")).amax(1) - own


def _hotflip_candidates(
    grad: torch.Tensor,
    emb_now: torch.Tensor,
    table: torch.Tensor,
    allowed: torch.Tensor,
    cur: torch.Tensor,
    vocab: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best (position, id) replacements per row by ``(E[v] − E[x_t])·g_t``: ``(pos, ids, valid)``, each n×k.

    Blocks of rows keep the n×T×V score tensor under ``_SCORE_CHUNK`` elements.
    """
    n, t = cur.shape
    v = len(vocab)
    rows = max(1, _SCORE_CHUNK // max(t * v, 1))
    pos, tok, valid = [], [], []
    for s in range(0, n, rows):
        g, e = grad[s : s + rows].float(), emb_now[s : s + rows].float()
        score = g @ table.T - (e * g).sum(-1, keepdim=True)  # b×T×V
        bad = ~allowed[s : s + rows, :, None] | (cur[s : s + rows, :, None] == vocab[None, None, :])
        score = score.masked_fill(bad, float("-inf")).flatten(1)
        best, flat = score.topk(min(k, score.shape[1]), dim=1)
        pos.append(flat // v)
        tok.append(vocab[flat % v])
        valid.append(torch.isfinite(best))
    return torch.cat(pos), torch.cat(tok), torch.cat(valid)


def _substitution_step(
    model: Any,
    offset: EmbeddingOffset,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    table: torch.Tensor,
    vocab: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One greedy step on rows ``(ids, y, changeable positions)``: ``(new ids, changed position, flipped, evaluations)``."""
    cur, y, allowed = state
    n = len(cur)
    offset.delta, offset.probe = None, True
    try:
        loss = torch.nn.functional.cross_entropy(first_output(model(cur)), y, reduction="sum")
    finally:
        offset.probe = False
    assert offset.output is not None and offset.probe_delta is not None
    emb_now = offset.output.detach()
    (grad,) = torch.autograd.grad(loss, offset.probe_delta)
    width = grad.shape[1]
    if grad.shape[0] != n or width > cur.shape[1]:
        raise ValueError(
            f"the embedding layer's output has shape {tuple(grad.shape)}, expected {n}×(≤{cur.shape[1]})×D: "
            "it is called on something other than the input ids"
        )
    pos, tok, valid = _hotflip_candidates(grad, emb_now, table, allowed[:, :width], cur[:, :width], vocab, k)
    kk = pos.shape[1]
    trials = cur.repeat_interleave(kk, dim=0)
    trials[torch.arange(n * kk, device=cur.device), pos.flatten()] = tok.flatten()
    with torch.no_grad():
        margin = _margin(first_output(model(trials)), y.repeat_interleave(kk)).view(n, kk)
    margin = margin.masked_fill(~valid, float("-inf"))
    pick = margin.argmax(1)
    rows = torch.arange(n, device=cur.device)
    new = torch.where(valid[rows, pick][:, None], trials.view(n, kk, -1)[rows, pick], cur)
    changed = torch.where(valid[rows, pick], pos[rows, pick], torch.full_like(pick, -1))
    return new, changed, margin[rows, pick] > 0, n + n * kk


def greedy_substitution(
    model: Any,
    ids: np.ndarray,
    y: np.ndarray,
    *,
    vocabulary: np.ndarray,
    budget: float = 0.1,
    candidates: int = 8,
    layer: str | None = None,
    pad_id: int = 0,
    batch_size: int = 128,
) -> SubstitutionResult:
    """Greedy HotFlip substitution of at most ``budget`` real tokens per row (see the module docstring).

    Args:
        model: an ``nn.Module`` over N×T int64 ids with an ``nn.Embedding`` layer.
        ids: token ids (``pad_id`` = padding, never changed), ``y``: labels.
        vocabulary: the ids an attacker may write (e.g. :func:`token_vocabulary` of train).
        budget: substitutions per row: an integer ``>= 1``, or a fraction ``< 1`` of the row's
            real tokens (``max(1, round(budget · n_real))``).
        candidates: first-order candidates verified by a forward pass at each step.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Embedding(6, 2), torch.nn.Flatten(), torch.nn.Linear(6, 2))
        >>> ids = np.array([[1, 2, 0]] * 4); y = np.zeros(4, dtype=int)
        >>> int(greedy_substitution(net, ids, y, vocabulary=np.arange(1, 6), budget=1).substitutions.max()) <= 1
        True
    """
    ids = np.asarray(ids, dtype=np.int64)
    width = embedded_width(model, ids, layer)  # packed inputs: only the leading ids are tokens
    n_real = (ids[:, :width] != pad_id).sum(1)
    per_row = np.full(len(ids), int(budget)) if budget >= 1 else np.maximum(1, np.rint(budget * n_real).astype(int))
    per_row = np.minimum(per_row, n_real)
    _, device = model_input_spec(model)
    emb = embedding_layer(model, layer)
    vocab = torch.as_tensor(token_vocabulary(vocabulary, emb.num_embeddings, pad_id), device=device)
    out = ids.copy()
    clean = np.zeros(len(ids), dtype=bool)
    fooled = np.zeros(len(ids), dtype=bool)
    used = np.zeros(len(ids), dtype=int)
    evaluations = 0
    with eval_mode(model), offset_embeddings(model, layer, pad_id=pad_id) as offset:
        table = emb.weight.detach()[vocab].float()
        for start in range(0, len(ids), batch_size):
            sl = slice(start, start + batch_size)
            res = _attack_rows(model, offset, (ids[sl], y[sl], per_row[sl], width), table, vocab, candidates)
            clean[sl], fooled[sl], used[sl], out[sl] = res[:4]
            evaluations += res[4]
    return SubstitutionResult(
        method="substitution",
        epsilon=float(budget),
        clean_correct=clean,
        fooled=fooled,
        x_adv=out,
        budget=per_row,
        substitutions=used,
        evaluations=evaluations,
    )


def _attack_rows(
    model: Any,
    offset: EmbeddingOffset,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray, int],
    table: torch.Tensor,
    vocab: torch.Tensor,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One batch: ``(clean_correct, fooled, substitutions, adversarial ids, evaluations)``."""
    device = vocab.device
    x = torch.as_tensor(batch[0], device=device)
    yb = torch.as_tensor(np.asarray(batch[1], dtype=np.int64), device=device)
    limit = torch.as_tensor(batch[2], device=device)
    with torch.no_grad():
        ok = first_output(model(x)).argmax(1) == yb
    evaluations = len(x)
    cur = x.clone()
    allowed = x != offset.pad_id
    allowed[:, int(batch[3]) :] = False  # packed inputs: the columns after the embedded ids are not tokens
    used = torch.zeros(len(x), dtype=torch.long, device=device)
    done = ~ok
    fooled = torch.zeros(len(x), dtype=torch.bool, device=device)
    while len(vocab):
        live = torch.nonzero(~done & (used < limit)).flatten()
        if not len(live):
            break
        new, changed, flipped, n_eval = _substitution_step(
            model, offset, (cur[live], yb[live], allowed[live]), table, vocab, k
        )
        evaluations += n_eval
        moved = changed >= 0
        cur[live] = new
        allowed[live[moved], changed[moved]] = False
        used[live[moved]] += 1
        fooled[live] = flipped
        done[live] = flipped | ~moved
    return ok.cpu().numpy(), fooled.cpu().numpy(), used.cpu().numpy(), cur.cpu().numpy(), evaluations
