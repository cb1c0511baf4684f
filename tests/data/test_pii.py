"""The PII scrubber: precision and recall per kind on the corpus of tests/data/pii_corpus.py, the
checksums it relies on, files of each format, and the text feature's scrub_pii option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pii_corpus import corpus, scores

import forgeml
from forgeml.data.pii import KINDS, iban_valid, luhn_valid, scrub, scrub_file
from forgeml.errors import DataError


@pytest.fixture(scope="module")
def measured() -> tuple[list, dict[str, dict[str, float]]]:
    items = corpus()
    return items, scores(items, [scrub(text)[0] for text, _, _ in items])


def test_the_corpus_has_200_positives_and_200_negatives_with_every_kind(measured):
    items, per_kind = measured
    positives = [kind for _, _, kind in items if kind is not None]
    assert len(positives) >= 200 and len(items) - len(positives) >= 200
    assert all(per_kind[kind]["positives"] >= 30 for kind in KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_precision_and_recall_per_kind_are_at_least_095(measured, kind: str):
    _, per_kind = measured
    assert per_kind[kind]["precision"] >= 0.95, per_kind[kind]
    assert per_kind[kind]["recall"] >= 0.95, per_kind[kind]


def test_luhn_and_iban_checksums():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005") and luhn_valid("6011111111111117")
    assert not luhn_valid("4111111111111112") and not luhn_valid("378282246310006")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("GB82WEST12345698765432") and iban_valid("NO9386011117947")
    assert not iban_valid("DE89 3704 0044 0532 0130 01")  # one digit off
    assert not iban_valid("DE89370400440532013")  # Germany's are 22 characters
    assert not iban_valid("XX89370400440532013000")  # no such country


@pytest.mark.parametrize(
    "text, expected, counts",
    [
        (
            "Contact John at john.doe@acme.com or 415-555-0132; card 4111 1111 1111 1111.",
            "Contact John at [EMAIL] or [PHONE]; card [CARD].",
            {"EMAIL": 1, "PHONE": 1, "CARD": 1},
        ),
        (
            "Server 10.1.2.3 (v2.4.1) logged https://intranet.example.com/u?id=5, from 2001:db8::8a2e:370:7334",
            "Server [IP] (v2.4.1) logged [URL], from [IP]",
            {"IP": 2, "URL": 1},
        ),
        (
            "Pay €1,250.00 to IBAN GB82 WEST 1234 5698 7654 32 by 2025-03-01, ref 004451239871",
            "Pay €1,250.00 to IBAN [IBAN] by 2025-03-01, ref [ID]",
            {"IBAN": 1, "ID": 1},
        ),
        ("SSN 078-05-1120, born 12/03/1990 at 04:30", "SSN [ID], born 12/03/1990 at 04:30", {"ID": 1}),
        ("Ring +49 30 901820 or mail info@bund.de", "Ring [PHONE] or mail [EMAIL]", {"PHONE": 1, "EMAIL": 1}),
        ("Nothing to see: Python 3.11.7, 3 cats, $5.", "Nothing to see: Python 3.11.7, 3 cats, $5.", {}),
    ],
)
def test_sentences_with_several_kinds(text: str, expected: str, counts: dict[str, int]):
    assert scrub(text) == (expected, counts)


def test_only_the_chosen_kinds_are_replaced():
    text = "jo@example.com, 415-555-0132"
    assert scrub(text, ["EMAIL"]) == ("[EMAIL], 415-555-0132", {"EMAIL": 1})
    with pytest.raises(ValueError, match="unknown PII kinds"):
        scrub(text, ["NAME"])


def test_scrub_file_keeps_the_format_and_the_other_columns(tmp_path: Path):
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text('id,text,stars\n1,"great, mail me at a.b@example.org",5\n2,plain text,3\n')
    written, rows, changed, counts = scrub_file(csv_file, "text")
    assert written == tmp_path / "reviews.scrubbed.csv" and (rows, changed, counts) == (2, 1, {"EMAIL": 1})
    assert written.read_text() == 'id,text,stars\n1,"great, mail me at [EMAIL]",5\n2,plain text,3\n'
    assert "a.b@example.org" in csv_file.read_text()  # the input is untouched

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"text": "call 020 7946 0958", "n": 1}) + "\n" + json.dumps({"text": None, "n": 2}) + "\n")
    written, rows, changed, counts = scrub_file(jsonl, "text", tmp_path / "out.jsonl")
    assert [json.loads(line) for line in written.read_text().splitlines()] == [{"text": "call [PHONE]", "n": 1}, {"text": None, "n": 2}]
    assert (rows, changed, counts) == (2, 1, {"PHONE": 1})

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["see www.example.com", "ok"], "n": [1, 2]}), parquet)
    written, rows, changed, counts = scrub_file(parquet, "text")
    assert pq.read_table(written).to_pydict() == {"text": ["see [URL]", "ok"], "n": [1, 2]}


def test_scrub_file_errors_name_the_problem(tmp_path: Path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("text\nx\n")
    with pytest.raises(DataError, match="no column named 'body'"):
        scrub_file(csv_file, "body")
    with pytest.raises(DataError, match="overwrite the input"):
        scrub_file(csv_file, "text", csv_file)
    with pytest.raises(DataError, match="no such file"):
        scrub_file(tmp_path / "missing.csv", "text")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"\.csv, \.tsv, \.jsonl or \.parquet"):
        scrub_file(tmp_path / "a.txt", "text")


def test_a_text_feature_scrubs_in_training_and_prediction(tmp_path: Path):
    rows = [("loved it, write to fan%d@example.com" % i, "fresh") if i % 2 else ("dull, call 415-555-01%02d" % i, "rotten") for i in range(40)]
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    config = {
        "data": {
            "source": {"type": "csv", "path": str(data)},
            "features": [{"type": "text", "name": "text", "min_frequency": 1, "scrub_pii": True}],
            "target": {"type": "category", "name": "label"},
        },
        "model": {"type": "textcnn", "embedding_dim": 4, "kernels": [1], "filters": 2},
        "train": {"max_steps": 2, "batch_size": 8},
    }
    run_dir = forgeml.train(config, out=tmp_path / "run", quiet=True).run_dir
    state = json.loads((run_dir / "features.json").read_text())["inputs"][0]["state"]
    assert state["pii_scrubbed"] == {"EMAIL": 20, "PHONE": 20}
    vocabulary = json.loads((run_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert "email" in vocabulary and "phone" in vocabulary and not any("example" in token for token in vocabulary)
    predictor = forgeml.load(run_dir)
    parsed = predictor.parse(predictor.to_table([{"text": "mail zz@example.net now"}]))
    assert list(parsed.columns["text"]) == ["mail [EMAIL] now"]
