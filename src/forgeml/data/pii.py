"""Scrub personal data out of text: e-mail addresses, URLs, IP addresses, IBANs, payment-card
numbers, phone numbers and long ID-like digit runs become ``[EMAIL]``, ``[URL]``, ``[IP]``,
``[IBAN]``, ``[CARD]``, ``[PHONE]`` and ``[ID]``.

    scrubbed, counts = scrub("mail jo@example.org or call +44 20 7946 0958")
    # "mail [EMAIL] or call [PHONE]", {"EMAIL": 1, "PHONE": 1}

Each kind is a regular expression for candidates plus, where a checksum or a parser can tell a
real value from a look-alike, that check: payment cards pass the Luhn check, IBANs the ISO 13616
mod-97 check and their country's length, IPv6 addresses Python's ``ipaddress`` parser. Kinds are
replaced in a fixed order (URLs before the e-mail addresses and IPs they may hold, cards and
IBANs before phone numbers and ID runs), so each span is counted once, as its most specific kind.
Version numbers (1.2.3), dates (2024-01-15, 03/04/2025), times (12:30:45), prices ($1,299.99) and
short numbers are left alone: they are the look-alikes ``tests/data/pii_corpus.jsonl`` checks.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from forgeml.data.sources import json_objects
from forgeml.errors import DataError
from forgeml.files import atomic_write

KINDS = ("URL", "EMAIL", "IBAN", "CARD", "IP", "PHONE", "ID")

# the number of characters of each country's IBAN (ISO 13616; the common ones)
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26,
    "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip

_URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d.,]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]*\d)(?!\.\w)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,5}"  # international: +44 20 7946 0958, +1 (415) 555-0132
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"  # (415) 555-0132
    r"|\d{3}([.-])\d{3}\1\d{4}"  # 415-555-0132, 415.555.0132
    r"|0\d{1,4}(?:[ .-]\d{2,8}){1,4}"  # national, with a trunk 0: 020 7946 0958, 01 23 45 67 89
    r")(?![\w-]|\.\d)"
)
_SSN = re.compile(r"\d{3}-\d{2}-\d{4}")
_ID = re.compile(rf"(?<![\w.,])(?:{_SSN.pattern}|\d{{9,}})(?![\w]|[.,]\d)")
_VERSION_BEFORE = re.compile(r"(?:\bv|\b(?:version|release|section|chapter|step|figure|table)\s*)$", re.IGNORECASE)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of payment-card numbers: doubling every second digit from the right, the
    digit sum is a multiple of 10."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: a known country's length, then the number formed by moving the first four
    characters to the end (letters as 10..35) is 1 modulo 97."""
    compact = text.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _is_card(match: re.Match[str]) -> bool:
    digits = _digits(match.group())
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def _is_ipv4(match: re.Match[str]) -> bool:
    before = match.string[max(0, match.start() - 12) : match.start()]
    return not _VERSION_BEFORE.search(before)  # v1.2.3.4, "version 10.0.0.1" and "section 4.2.1.3" are not addresses


def _is_ipv6(match: re.Match[str]) -> bool:
    text = match.group()
    if "::" not in text and text.count(":") != 7:
        return False  # 12:30:45 is a time; an address has 8 groups or a '::'
    if not re.search(r"[0-9A-Fa-f]", text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_phone(match: re.Match[str]) -> bool:
    text = match.group()
    digits = _digits(text)
    if text.startswith("+"):
        return 8 <= len(digits) <= 15
    if text.startswith("0"):  # a trunk prefix, unless it has the shape of a US social security number (078-05-1120)
        return 9 <= len(digits) <= 12 and not _SSN.fullmatch(text)
    return len(digits) == 10


def _trim_url(match: re.Match[str]) -> tuple[int, int]:
    """A URL does not end with the sentence's punctuation or an unmatched closing bracket."""
    start, end = match.span()
    text = match.string
    while end > start and text[end - 1] in ".,;:!?'\"":
        end -= 1
    if end > start and text[end - 1] == ")" and text[start:end].count("(") < text[start:end].count(")"):
        end -= 1
    return start, end


# kind, pattern, check (None: every match counts), span (None: the whole match)
_RULES: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None, Callable[[re.Match[str]], tuple[int, int]] | None]] = [
    ("URL", _URL, None, _trim_url),
    ("EMAIL", _EMAIL, None, None),
    ("IBAN", _IBAN, lambda m: iban_valid(m.group()), None),
    ("CARD", _CARD, _is_card, None),
    ("IP", _IPV6, _is_ipv6, None),
    ("IP", _IPV4, _is_ipv4, None),
    ("PHONE", _PHONE, _is_phone, None),
    ("ID", _ID, None, None),
]


def scrub(text: str, kinds: Iterable[str] = KINDS) -> tuple[str, dict[str, int]]:
    """``text`` with every piece of personal data of ``kinds`` replaced by ``[KIND]``, and how many
    of each kind were replaced.

    Raises:
        ValueError: an unknown kind.
    """
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; the kinds are {', '.join(KINDS)}")
    counts: dict[str, int] = {}
    for kind, pattern, check, span in _RULES:
        if kind not in wanted:
            continue
        pieces: list[str] = []
        last = 0
        for match in pattern.finditer(text):
            if check is not None and not check(match):
                continue
            start, end = span(match) if span is not None else match.span()
            if start < last:
                continue
            pieces += [text[last:start], f"[{kind}]"]
            last = end
            counts[kind] = counts.get(kind, 0) + 1
        if pieces:
            text = "".join(pieces) + text[last:]
    return text, counts


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """``total`` with ``more`` added, in place; returned for chaining."""
    for kind, count in more.items():
        total[kind] = total.get(kind, 0) + count
    return total


def scrub_file(path: str | Path, column: str, out: str | Path | None = None, kinds: Iterable[str] = KINDS) -> tuple[Path, int, int, dict[str, int]]:
    """Scrub one column of a CSV / TSV, JSON Lines or Parquet file into a new file of the same format
    (other columns unchanged).

    Args:
        path: the file.
        column: the text column to scrub.
        out: where to write; None: ``<name>.scrubbed<suffix>`` beside ``path``.
        kinds: the kinds of personal data to replace.

    Returns:
        The written file, the rows read, the rows changed, and the replacements per kind.

    Raises:
        DataError: the file is missing, of another format, or has no such column.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: no such file")
    suffix = source.suffix.lower()
    target = Path(out) if out is not None else source.with_name(f"{source.stem}.scrubbed{source.suffix}")
    if target.resolve() == source.resolve():
        raise DataError(f"{target}: the output would overwrite the input; give another --out")
    counts: dict[str, int] = {}
    changed = 0

    def clean(value: Any) -> Any:
        nonlocal changed
        if not isinstance(value, str):
            return value
        text, found = scrub(value, kinds)
        changed += text != value
        add_counts(counts, found)
        return text

    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            fields = list(reader.fieldnames or [])
            if column not in fields:
                raise DataError(f"{source}: no column named {column!r} (columns: {', '.join(fields)})")
            rows = [{**row, column: clean(row[column])} for row in reader]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue().encode("utf-8")
        count = len(rows)
    elif suffix in (".jsonl", ".ndjson"):
        lines = []
        for number, row in json_objects(source):
            if column not in row:
                raise DataError(f"{source}, line {number}: no key {column!r}")
            row[column] = clean(row[column])
            lines.append(json.dumps(row, ensure_ascii=False))
        data, count = ("\n".join(lines) + "\n").encode("utf-8"), len(lines)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(source)
        if column not in table.column_names:
            raise DataError(f"{source}: no column named {column!r} (columns: {', '.join(table.column_names)})")
        values = [clean(v) for v in table.column(column).to_pylist()]
        table = table.set_column(table.column_names.index(column), column, pa.array(values, type=table.schema.field(column).type))
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data, count = buffer.getvalue(), table.num_rows
    else:
        raise DataError(f"{source}: give a .csv, .tsv, .jsonl or .parquet file")
    atomic_write(target, data)
    return target, count, changed, counts
