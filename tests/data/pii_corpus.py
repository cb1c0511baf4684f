"""The corpus the PII scrubber is measured on: sentences holding one piece of personal data each
(positives, generated from seeded random values in many real formats) and sentences with none
(negatives, most of them look-alikes: versions, dates, times, prices, coordinates, short numbers).

``corpus()`` returns (text, expected) pairs, where expected is the text as the scrubber should
leave it; ``scores()`` turns scrubber output into precision and recall per kind. Used by
tests/data/test_pii.py and benchmarks/pii_scrubber.py.
"""

from __future__ import annotations

import random
import re
from typing import Callable

POSITIVE_TEMPLATES = [
    "Please contact {} for details.",
    "{}",
    "My details: {}, thanks!",
    "Sent from {} on Monday",
    "(reach me at {})",
    "The value was {}.",
    "Forwarding to {} as discussed",
    "note - {} - end",
]

FIRST = ["anna", "ben", "chloe", "dmitri", "eve", "farah", "gustav", "hana", "ivan", "jo", "kwame", "li", "maria", "noor"]
LAST = ["smith", "okafor", "nguyen", "garcia", "müller", "rossi", "kowalski", "tanaka", "haddad", "silva"]
DOMAINS = ["example.com", "mail.example.org", "company.co.uk", "uni-berlin.de", "startup.io", "post.example.net"]


def _emails(rng: random.Random) -> list[str]:
    out = []
    for i in range(36):
        first, last, domain = rng.choice(FIRST), rng.choice(LAST).replace("ü", "u"), rng.choice(DOMAINS)
        shape = i % 6
        local = [f"{first}.{last}", f"{first}_{last}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}+news", f"{first.upper()}", f"{last}.{first}-{rng.randint(1, 9)}"][shape]
        out.append(f"{local}@{domain.upper() if shape == 4 else domain}")
    return out


def _urls(rng: random.Random) -> list[str]:
    paths = ["", "/", "/about", "/docs/index.html", "/search?q=forgeml&page=2", "/a/b/c.pdf", "/path_(1)", "/#section-3"]
    out = []
    for i in range(36):
        host = rng.choice(["example.com", "www.example.org", "docs.python.org", "api.service.io", "192.168.10.20:8080", "sub.domain.co.uk"])
        scheme = ["https://", "http://", "ftp://", ""][i % 4]
        if scheme == "" and not host.startswith("www."):
            host = "www." + host.split(":")[0] if not host[0].isdigit() else "www.example.net"
        out.append(f"{scheme}{host}{rng.choice(paths)}")
    return out


def _ips(rng: random.Random) -> list[str]:
    out = [".".join(str(rng.randint(0, 255)) for _ in range(4)) for _ in range(18)]
    out += ["10.0.0.1", "127.0.0.1", "255.255.255.0"]
    for _ in range(8):
        out.append(":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)))
    out += ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2606:4700:4700::1111"]
    return out


def _iban(rng: random.Random, country: str, length: int) -> str:
    body = "".join(str(rng.randint(0, 9)) for _ in range(length - 4))
    rearranged = body + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    return f"{country}{check:02d}{body}"


def _ibans(rng: random.Random) -> list[str]:
    countries = {"DE": 22, "GB": 22, "FR": 27, "NL": 18, "ES": 24, "IT": 27, "BE": 16, "CH": 21, "PL": 28, "NO": 15}
    out = []
    for i in range(32):
        country = list(countries)[i % len(countries)]
        compact = _iban(rng, country, countries[country])
        if country in ("GB", "NL"):  # their BBANs start with a bank code in letters
            letters = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
            compact = _iban_with_letters(rng, country, countries[country], letters)
        out.append(" ".join(compact[j : j + 4] for j in range(0, len(compact), 4)) if i % 2 else compact)
    return out


def _iban_with_letters(rng: random.Random, country: str, length: int, letters: str) -> str:
    body = letters + "".join(str(rng.randint(0, 9)) for _ in range(length - 8))
    check = 98 - int("".join(str(int(c, 36)) for c in body + country + "00")) % 97
    return f"{country}{check:02d}{body}"


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # these are doubled once the check digit is appended
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return digits + str((10 - total % 10) % 10)


def _cards(rng: random.Random) -> list[str]:
    out = []
    for i in range(36):
        prefix, length = [("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("4", 13)][i % 6]
        number = _luhn_complete(prefix, length, rng)
        style = i % 3
        if style == 1:
            groups = [number[:4], number[4:10], number[10:]] if length == 15 else [number[j : j + 4] for j in range(0, length, 4)]
            number = " ".join(groups)
        elif style == 2:
            number = "-".join(number[j : j + 4] for j in range(0, len(number), 4))
        out.append(number)
    return out


def _phones(rng: random.Random) -> list[str]:
    def d(n: int) -> str:
        return "".join(str(rng.randint(0, 9)) for _ in range(n))

    makers: list[Callable[[], str]] = [
        lambda: f"+1 ({rng.randint(201, 989)}) 555-{d(4)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"({rng.randint(201, 989)}) {d(3)}-{d(4)}",
        lambda: f"{rng.randint(201, 989)}-{d(3)}-{d(4)}",
        lambda: f"{rng.randint(201, 989)}.{d(3)}.{d(4)}",
        lambda: f"020 {d(4)} {d(4)}",
        lambda: f"01 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+49 30 {d(8)}",
        lambda: f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+91 {d(5)} {d(5)}",
        lambda: f"+81-3-{d(4)}-{d(4)}",
        lambda: f"07700 {d(6)}",
    ]
    return [makers[i % len(makers)]() for i in range(36)]


def _ids(rng: random.Random) -> list[str]:
    out = []
    for i in range(32):
        if i % 3 == 0:
            out.append(f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}")
        else:
            out.append(str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(8, 13))))
    return out


GENERATORS = {"EMAIL": _emails, "URL": _urls, "IP": _ips, "IBAN": _ibans, "CARD": _cards, "PHONE": _phones, "ID": _ids}

NEGATIVES = [
    # versions
    "Upgrade to v2.3.1 before Friday.", "We run version 10.0.19045 on the build box.", "Python 3.11.7 and torch 2.13.0",
    "release 1.2.3.4 fixed the crash", "see section 4.2.1.3 of the manual", "node v18.17.0 is required", "bump 0.9.12 -> 0.10.0",
    "Chrome 120.0.6099.109 is out", "libc 2.36-9", "API v1 vs v2", "kernel 6.1.0-13-amd64",
    # dates and times
    "Due 2024-01-15.", "born 15/01/1987", "on 03.04.2025 at noon", "Jan 5, 2024", "2023-12-31T23:59:59Z", "at 12:30:45 sharp",
    "the 09:15 train", "lap time 1:02:33.456", "from 2019 to 2024", "week 52 of 2023", "12/25", "Q3 2024 results", "FY2025",
    "meeting 10:00-11:30", "20240115 is the batch date",
    # prices and amounts
    "It costs $1,299.99 today.", "€ 45,00 per month", "£3.50 a pint", "1,000,000 dollars", "USD 12,345.67", "a 15% discount",
    "salary 85,000-95,000", "¥10,000", "2.5 million users", "1.234.567,89 EUR", "$0.99 apps", "revenue of 3,456,789,012",
    # measurements and coordinates
    "51.5074, -0.1278", "lat 40.7128 lon -74.0060", "pi is 3.141592653589793", "3.0e-8 seconds", "temperature -12.5 C",
    "1920x1080 pixels", "an aspect ratio of 16:9", "a 1:2:3 mix", "heights 1.72 m and 1.85 m", "speed 299,792,458 m/s",
    # short numbers, codes and identifiers that are not personal
    "room 404", "page 123 of 456", "order #12345", "ZIP 94103", "error code 0x80070005", "HTTP 500", "flight BA 117",
    "chapter 11", "route 66", "a 12345678 seed", "score 3-1", "the 1990s", "top 10 20 30 40 list", "call 911", "dial 112",
    "ext. 2041", "PIN length is 4", "colour #ff00aa", "commit a1b2c3d", "sha e3b0c44298fc1c149afbf4c8996fb924",
    "ISO 8601", "RFC 3339", "COVID-19", "Boeing 737-800", "A4 paper", "MP3 at 320 kbps", "iPhone 15", "Windows 11",
    # e-mail, URL and IP look-alikes
    "follow @forgeml on social media", "user at example dot com", "the @ sign", "email me: name [at] domain", "a@b",
    "see file.txt and config.yaml", "e.g. and i.e. differ", "Node.js and Vue.js", "scores 999.1.1.1 and 300.2.2.2",
    "the IP was redacted", "write to root@localhost", "version 1.2.3.4.5", "localhost:8080", "fe80 is a prefix",
    "go to example dot org", "mailto links", "user@", "@home", "ratio 12:34:56", "at 1:2:3:4 scale",
    # card, IBAN, phone and ID look-alikes
    "4111 1111 1111 1112 fails the check", "a 16-digit 1234 5678 9012 3456", "GB00 not an IBAN", "DE12 3456", "the EU has 27 states",
    "ISBN 978-0-306-40615-7", "lot 2024-0001-17", "2 x 4 x 8", "555-0132", "room 2-041", "year 2025, month 11", "1-800-FLOWERS",
    "12345 67890", "10 20 30 40 50", "serial 12-34-56", "v0.12.345.6789", "pages 100-200",
    # plain prose
    "The film was a triumph of style over substance.", "Nothing personal here at all.", "Meet me by the old oak tree.",
    "Numbers like 7, 42 and 1999 are fine.", "She scored 98.6 on the test.", "Two plus two is four.",
    "A cat sat on the mat.", "The weather is 21 degrees.", "It has 3 bedrooms and 2 baths.", "Sprint 14 starts Monday.",
]


def _negative_variants() -> list[str]:
    """Each look-alike alone and inside a sentence: over 200 negatives."""
    out = []
    for i, text in enumerate(NEGATIVES):
        out.append(text)
        out.append(f"{POSITIVE_TEMPLATES[i % 3].format(text)}")
    return out


def corpus(seed: int = 0) -> list[tuple[str, str, str | None]]:
    """(text, expected scrubbed text, kind or None) for every positive, then every negative."""
    rng = random.Random(seed)
    items: list[tuple[str, str, str | None]] = []
    for kind, make in GENERATORS.items():
        for i, value in enumerate(make(rng)):
            template = POSITIVE_TEMPLATES[i % len(POSITIVE_TEMPLATES)]
            items.append((template.format(value), template.format(f"[{kind}]"), kind))
    items += [(text, text, None) for text in _negative_variants()]
    return items


TAG = re.compile(r"\[(URL|EMAIL|IBAN|CARD|IP|PHONE|ID)\]")


def scores(items: list[tuple[str, str, str | None]], scrubbed: list[str]) -> dict[str, dict[str, float]]:
    """Precision and recall per kind. A positive is found when the scrubber's output is exactly the
    expected text (the value replaced by its tag, nothing else touched); every tag that is not an
    expected one is a false positive of its kind."""
    found: dict[str, dict[str, int]] = {}
    for (_, expected, kind), output in zip(items, scrubbed):
        if kind is not None:
            entry = found.setdefault(kind, {})
            hit = output == expected
            entry["tp"] = entry.get("tp", 0) + hit
            entry["fn"] = entry.get("fn", 0) + (not hit)
        tags = TAG.findall(output)
        extra = list(tags)
        if kind is not None and output == expected:
            extra.remove(kind)
        for tag in extra:
            entry = found.setdefault(tag, {})
            entry["fp"] = entry.get("fp", 0) + 1
    result = {}
    for kind in GENERATORS:
        entry = found.get(kind, {})
        tp, fp, fn = entry.get("tp", 0), entry.get("fp", 0), entry.get("fn", 0)
        result[kind] = {
            "positives": tp + fn,
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "false_positives": fp,
            "missed": fn,
        }
    return result
