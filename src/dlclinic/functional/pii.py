"""Personal data in tabular/text columns: counts per column and kind, never the values.

Kinds and how a match is confirmed (patterns alone flag too many numbers):

* ``email`` — ``local@domain.tld``;
* ``phone`` — international ``+`` numbers (8–15 digits) or 9–15 digits in 3+ separated
  groups; a payment card or IBAN match is not counted again as a phone;
* ``payment_card`` — 13–19 digits (spaces/dashes allowed) that pass the **Luhn** checksum
  and start with a known issuer prefix (2–6);
* ``iban`` — country code, two check digits, 11–30 alphanumerics, valid **mod-97**;
* ``national_id`` — US SSN (``AAA-GG-SSSS`` with the SSA's excluded ranges) and UK
  National Insurance numbers;
* ``ipv4`` — dotted quads with octets ≤ 255.

Findings carry counts and the *kind* only; the matched text never leaves this module,
so reports and logs cannot leak what they found. Hand-written because the maintained
detectors (Microsoft Presidio) need spaCy models that are far heavier than these checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "PiiReport", "iban_valid", "luhn_valid", "scan_table", "scan_values"]

KINDS = ("email", "phone", "payment_card", "iban", "national_id", "ipv4")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<![\d.,-])(?:\d[ -]?){12,18}\d(?![\d-]|[.,]\d)")
_DECIMAL = re.compile(r"^\s*[-+]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][-+]?\d+)\s*$")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
_NINO = re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?!\d)")
_PHONE_GROUPED = re.compile(
    r"(?<![\d+])(?:\(\d{2,4}\)[ .-]?|\d{2,5}[ .-])\d{2,4}[ .-]\d{2,8}(?:[ .-]\d{2,5})?(?![\d-])"
)
_DATE = re.compile(
    r"(?<!\d)(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?(?!\d)"
)
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
_NAME_HINTS = {
    "email": ("email", "e_mail", "mail"),
    "phone": ("phone", "mobile", "tel", "fax"),
    "payment_card": ("card", "ccnum", "pan", "credit"),
    "iban": ("iban", "account", "bank"),
    "national_id": ("ssn", "social_security", "nino", "national_id", "passport", "tax_id", "tin"),
    "person": ("name", "surname", "first_name", "last_name", "address", "street", "zip", "postcode", "birth", "dob"),
}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a digit string.

    Example:
        >>> luhn_valid("4539578763621486"), luhn_valid("4539578763621487")
        (True, False)
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN (spaces ignored).

    Example:
        >>> iban_valid("GB82 WEST 1234 5698 7654 32"), iban_valid("GB82 WEST 1234 5698 7654 33")
        (True, False)
    """
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit() or not s.isalnum():
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _count_text(text: str, counts: dict[str, int]) -> None:
    taken: list[tuple[int, int]] = []

    def free(span: tuple[int, int]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in taken)

    taken += [m.span() for m in _DATE.finditer(text)]  # dates and times are not phone numbers
    for m in _EMAIL.finditer(text):
        counts["email"] += 1
        taken.append(m.span())
    for m in _IBAN.finditer(text):
        if iban_valid(m.group()):
            counts["iban"] += 1
            taken.append(m.span())
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if free(m.span()) and 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits):
            counts["payment_card"] += 1
            taken.append(m.span())
    for pat in (_SSN, _NINO):
        for m in pat.finditer(text):
            if free(m.span()):
                counts["national_id"] += 1
                taken.append(m.span())
    for m in _IPV4.finditer(text):
        if free(m.span()):
            counts["ipv4"] += 1
            taken.append(m.span())
    for pat in (_PHONE_INTL, _PHONE_GROUPED):
        for m in pat.finditer(text):
            n_digits = sum(ch.isdigit() for ch in m.group())
            if free(m.span()) and 8 <= n_digits <= 15:
                counts["phone"] += 1
                taken.append(m.span())


def scan_values(values: Iterable[Any]) -> tuple[dict[str, int], int]:
    """Matches per kind over ``values`` and the number of values with at least one match.

    Example:
        >>> scan_values(["write to ann@example.org", "no pii here", "card 4539 5787 6362 1486"])
        ({'email': 1, 'phone': 0, 'payment_card': 1, 'iban': 0, 'national_id': 0, 'ipv4': 0}, 2)
    """
    totals = dict.fromkeys(KINDS, 0)
    rows = 0
    for v in values:
        if v is None or isinstance(v, float) or isinstance(v, bool):
            continue  # floats cannot hold identifiers reliably (precision) and NaN means missing
        text = str(v)
        if len(text) < 6:
            continue
        counts = dict.fromkeys(KINDS, 0)
        _count_text(text, counts)
        if any(counts.values()):
            rows += 1
            for k, c in counts.items():
                totals[k] += c
    return totals, rows


@dataclass(frozen=True)
class PiiReport:
    """Per-column counts (kind → matches) and rows with a match; column-name hints; no values."""

    n_rows: int
    columns: Mapping[str, Mapping[str, int]]
    rows_with_pii: Mapping[str, int]
    name_hints: Mapping[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(sum(c.values()) for c in self.columns.values()))

    def flagged_columns(self) -> list[str]:
        return [c for c, counts in self.columns.items() if sum(counts.values()) > 0]


def _name_hint(column: str) -> str | None:
    low = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")
    parts = set(low.split("_"))
    for kind, hints in _NAME_HINTS.items():
        for h in hints:
            if h == low or h in parts or ("_" in h and h in low):
                return kind
    return None


def scan_table(table: Any, *, max_rows: int | None = None) -> PiiReport:
    """Scan every column of a pandas DataFrame or a ``{column: values}`` mapping.

    Float columns are skipped (identifiers stored as floats lose digits), also when read as
    text from a CSV (≥ 95 % of values are decimals); integer columns are scanned as text (a
    card number stored as an int is still a card number).

    Example:
        >>> rep = scan_table({"contact": ["a@b.io", "x"], "age": [31, 40]})
        >>> rep.columns["contact"]["email"], rep.flagged_columns()
        (1, ['contact'])
    """
    if hasattr(table, "columns") and hasattr(table, "__getitem__") and not isinstance(table, Mapping):
        cols = {str(c): table[c] for c in table.columns}
        n_rows = len(table)
    else:
        cols = {str(k): v for k, v in dict(table).items()}
        n_rows = max((len(v) for v in cols.values()), default=0)
    out: dict[str, dict[str, int]] = {}
    rows: dict[str, int] = {}
    hints: dict[str, str] = {}
    for name, values in cols.items():
        hint = _name_hint(name)
        if hint:
            hints[name] = hint
        dtype = getattr(values, "dtype", None)
        if dtype is not None and getattr(dtype, "kind", "O") == "f":
            out[name], rows[name] = dict.fromkeys(KINDS, 0), 0
            continue
        seq = list(values)[:max_rows] if max_rows is not None else list(values)
        texts = [v for v in seq if isinstance(v, str) and v.strip()]
        if texts and sum(bool(_DECIMAL.match(v)) for v in texts) >= 0.95 * len(texts):
            out[name], rows[name] = dict.fromkeys(KINDS, 0), 0  # a float column read as text (CSV)
            continue
        out[name], rows[name] = scan_values(seq)
    return PiiReport(n_rows=n_rows, columns=out, rows_with_pii=rows, name_hints=hints)
