"""4. FGSM / PGD-L∞ robust accuracy vs the Adversarial Robustness Toolbox (ART).

The demo baseline on its test split (inputs in [0, 1]), ε = 0.1 of the value range, PGD with
10 steps of 0.025 (2.5 ε / steps), no random start, untargeted cross-entropy, batches of 256.
dlclinic runs ``functional.attacks.attack`` twice: with early stop (as the checkup runs it:
a sample leaves the batch once it is fooled) and without (ART's procedure). ART runs
``FastGradientMethod`` / ``ProjectedGradientDescent`` on a ``PyTorchClassifier`` of the same
weights. Robust accuracy = correct after the attack, over all rows, on both sides; ART's
time includes its two ``predict`` calls (clean and adversarial accuracy), which dlclinic's
``attack`` computes inside.
"""

from __future__ import annotations

from typing import Any

from bench.peers.common import case_entry, case_of, load_demo, load_demo_model, row, timed, version_of

NUMBER = 4
TITLE = "FGSM / PGD robust accuracy vs ART (same ε and steps)"
SIDES = {"ours": "project", "art": "art"}
EPS, STEPS = 0.1, 10


def _data(cfg: dict[str, Any]) -> tuple[Any, Any]:
    arrays, _ = load_demo(cfg)
    n = 300 if cfg["quick"] else 1000
    return arrays["test_x"][:n], arrays["test_y"][:n]


def run(side: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    x, y = _data(cfg)
    model = load_demo_model(cfg)
    cases: dict[str, Any] = {}
    if side == "ours":
        from dlclinic.functional.attacks import attack

        for method in ("fgsm", "pgd_linf"):
            for early in (True, False):
                med, times, r = timed(
                    lambda: attack(
                        model, x, y, method=method, epsilon=EPS, lower=0.0, upper=1.0, steps=STEPS, early_stop=early
                    ),
                    cfg["repeats"],
                    warmup=1,
                )  # type: ignore[arg-type]
                cases[f"{method}:{'early' if early else 'full'}"] = case_entry(
                    med, times, clean_acc=round(r.clean_accuracy, 4), robust_acc=round(r.robust_accuracy, 4)
                )
        return {"cases": cases, "versions": version_of("torch")}
    import torch
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=int(y.max()) + 1,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    attacks = {
        "fgsm": lambda: FastGradientMethod(clf, norm=np.inf, eps=EPS, batch_size=256),
        "pgd_linf": lambda: ProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=EPS,
            eps_step=2.5 * EPS / STEPS,
            max_iter=STEPS,
            num_random_init=0,
            batch_size=256,
            verbose=False,
        ),
    }

    def job(make: Any) -> tuple[float, float]:
        """The same job as dlclinic's call: clean accuracy, the attack, robust accuracy."""
        clean = float((clf.predict(x, batch_size=256).argmax(1) == y).mean())
        adv = make().generate(x=x, y=y)
        return clean, float((clf.predict(adv, batch_size=256).argmax(1) == y).mean())

    for method, make in attacks.items():
        med, times, (clean, robust) = timed(lambda: job(make), cfg["repeats"], warmup=1)
        cases[f"{method}:full"] = case_entry(med, times, clean_acc=round(clean, 4), robust_acc=round(robust, 4))
    return {"cases": cases, "versions": version_of("adversarial-robustness-toolbox", "torch", "numpy")}


def rows(results: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    n = 300 if cfg["quick"] else 1000
    out = []
    for method, name in (("fgsm", "FGSM"), ("pgd_linf", f"PGD-L∞, {STEPS} steps")):
        peer = case_of(results, "art", f"{method}:full")
        art_name = "FastGradientMethod" if method == "fgsm" else "ProjectedGradientDescent"
        out.append(
            row(
                f"{name}, ε={EPS}, {n} test rows",
                "attack(early_stop=False)",
                case_of(results, "ours", f"{method}:full"),
                art_name,
                peer,
            )
        )
        out.append(
            row(
                f"{name}, ε={EPS}, {n} test rows",
                "attack (early stop, as in the checkup)",
                case_of(results, "ours", f"{method}:early"),
                art_name,
                peer,
            )
        )
    notes = [
        "Where dlclinic is slower (PGD without early stop): every step it runs one more forward pass on the stepped inputs to record which rows are fooled, which the early-stop bookkeeping needs but `early_stop=False` does not; ART checks once at the end. Fix: skip the per-step pass when `early_stop=False` (about a third of a PGD step's cost). The checkup always runs with early stop, where dlclinic is faster.",
        "Early stop makes PGD at least as strong (a sample counts as fooled at the first step that fools it; ART keeps stepping and may step back to a correct class) and cheaper: later steps only cost the surviving rows.",
    ]
    return out, notes
