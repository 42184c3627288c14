"""Render a :class:`~dlclinic.core.results.Report` as ``dlclinic.report/1`` JSON.

Example:
    >>> from dlclinic.core.results import Report, sequence_of_results
    >>> text = render_json(Report("0.1.0", "2024-01-01T00:00:00Z", {}, sequence_of_results([])))
    >>> text.count('"status"')
    31
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dlclinic.core.results import Report

__all__ = ["render_json"]


def render_json(report: Report) -> str:
    """The report as indented JSON text (strict: no NaN or Infinity).

    Args:
        report: The checkup result.

    Returns:
        ``json.dumps(report.to_dict(), indent=2, allow_nan=False)`` plus a final newline.

    Raises:
        ValueError: If the report holds a non-finite number that ``to_dict`` let through.
    """
    return json.dumps(report.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
