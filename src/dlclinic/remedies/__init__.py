"""Treatments, as building blocks: training recipe, baselines, cleaning plans.

Remedies return new artifacts (row selections, weights); they never modify the user's
model or data. :func:`dlclinic.api.treat` (``dlclinic.treat``) runs a remedy end to end
and measures again. Remedies that exist in this version: ``data.quality``.
"""

from __future__ import annotations

__all__ = ["REMEDIES"]

REMEDIES = ("data.quality",)
