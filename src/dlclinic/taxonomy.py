"""The 31 challenges of deep learning, in the order every report lists them.

Ids, categories and titles follow ``shared/CHALLENGES.md``; descriptions are the
one-line descriptions of the seed taxonomy (``challenges-in-deep-learning.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dlclinic.core.errors import ConfigError, UnknownChallengeError

__all__ = ["CATEGORIES", "CHALLENGES", "Challenge", "get_challenge", "resolve_ids"]


@dataclass(frozen=True)
class Challenge:
    """One row of the taxonomy."""

    id: str
    category: str
    title: str
    description: str


CATEGORIES: dict[str, str] = {
    "data": "Data",
    "compute": "Computational resources",
    "model": "Model",
    "optimization": "Optimization & training",
    "ethics": "Ethical & social",
    "research": "Research & development",
    "deployment": "Deployment & integration",
}

_ROWS: tuple[tuple[str, str, str], ...] = (
    ("data.quantity", "Data Quantity", "DL models require massive labeled datasets for good performance"),
    ("data.quality", "Data Quality", "Noisy, incomplete, or imbalanced data can degrade model performance"),
    ("data.labeling_cost", "Labeling Cost", "Manual annotation is expensive and time-consuming"),
    ("data.privacy", "Data Privacy", "Sensitive domains (e.g., healthcare) have restrictions on data sharing"),
    (
        "data.generalization",
        "Generalization",
        "Models trained on narrow datasets may not generalize to unseen distributions",
    ),
    ("compute.training_cost", "High Training Cost", "Training large models needs powerful GPUs/TPUs and long time"),
    ("compute.energy", "Energy Consumption", "Deep models are computationally intensive, increasing carbon footprint"),
    ("compute.edge", "Deployment on Edge", "DL models are often too large for mobile/IoT devices"),
    (
        "compute.realtime",
        "Real-time Inference",
        "Achieving low latency for DL models is difficult in real-time systems",
    ),
    ("model.overfitting", "Overfitting", "Deep models may memorize training data, failing on new data"),
    ("model.gradients", "Vanishing/Exploding Gradients", "Affects training in deep architectures, especially RNNs"),
    ("model.architecture", "Architecture Complexity", "Choosing the right depth, width, and topology is non-trivial"),
    ("model.hyperparameters", "Hyperparameter Tuning", "Requires trial and error or expensive automated search"),
    ("model.interpretability", "Interpretability", "DL models are black-box and hard to explain"),
    ("model.compression", "Model Compression", "Pruning or quantizing models while retaining accuracy is complex"),
    (
        "optimization.nonconvex",
        "Non-convex Optimization",
        "Loss surfaces are complex with many local minima/saddle points",
    ),
    (
        "optimization.convergence",
        "Convergence Issues",
        "Poor initialization or improper learning rate can slow/stop training",
    ),
    ("optimization.batchnorm", "Batch Normalization Sensitivity", "Affects performance if not tuned properly"),
    (
        "optimization.forgetting",
        "Catastrophic Forgetting",
        "In continual learning, models forget previously learned tasks",
    ),
    ("ethics.fairness", "Bias and Fairness", "DL models may learn and reinforce societal biases"),
    (
        "ethics.security",
        "Security Vulnerabilities",
        "Susceptible to adversarial attacks (small perturbations fool models)",
    ),
    ("ethics.misuse", "Misuse of DL", "Deepfakes, surveillance, and unethical applications"),
    ("ethics.compliance", "Regulatory Compliance", "Adhering to GDPR, HIPAA, and other regulations"),
    ("research.reproducibility", "Reproducibility", "DL experiments are often hard to replicate due to randomness"),
    (
        "research.benchmark_saturation",
        "Benchmark Saturation",
        "Many benchmarks are nearly solved, hiding real-world shortcomings",
    ),
    ("research.theory", "Lack of Theoretical Foundation", "Many DL methods lack rigorous mathematical explanations"),
    ("research.open_ended", "Open-ended Learning", "Generalizing learning without fixed tasks is still unsolved"),
    ("deployment.drift", "Model Drift", "Model accuracy may degrade over time as data evolves"),
    ("deployment.integration", "Integration with Legacy Systems", "Hard to plug DL into existing infrastructure"),
    ("deployment.monitoring", "Monitoring and Maintenance", "Needs continuous performance tracking and retraining"),
    ("deployment.scalability", "Scalability", "Serving DL models at large scale requires specialized systems"),
)

CHALLENGES: tuple[Challenge, ...] = tuple(
    Challenge(id=cid, category=cid.split(".")[0], title=title, description=desc) for cid, title, desc in _ROWS
)

_BY_ID = {c.id: c for c in CHALLENGES}


def get_challenge(challenge_id: str) -> Challenge:
    """Return the challenge with this id; raises ``UnknownChallengeError`` otherwise."""
    try:
        return _BY_ID[challenge_id]
    except KeyError:
        raise UnknownChallengeError(challenge_id, [c.id for c in CHALLENGES]) from None


def resolve_ids(selection: list[str] | None) -> list[str]:
    """Expand a selection of ids or category names (``data``) into ids, in taxonomy order.

    ``None`` (or an empty list) selects every challenge; an item that names nothing
    (``""``, ``","``, ``" "``: an unset shell variable) is an error, not "everything".
    """
    if not selection:
        return [c.id for c in CHALLENGES]
    wanted: set[str] = set()
    for item in selection:
        parts = [p.strip() for p in item.split(",") if p.strip()]
        if not parts:
            raise ConfigError(
                f"--only {item!r}: expected challenge ids or categories (e.g. data.quality or data), found an empty selection"
            )
        for part in parts:
            if part in CATEGORIES:
                wanted.update(c.id for c in CHALLENGES if c.category == part)
            else:
                wanted.add(get_challenge(part).id)
    return [c.id for c in CHALLENGES if c.id in wanted]
