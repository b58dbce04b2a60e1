"""Contracts of recbole_prorec.data: every input format -> the same atomic files, errors that name file and line."""

import gzip
import json
import logging

import pytest

from recbole_prorec.data import ConversionError, convert, detect_format, ensure_atomic_files
from recbole_prorec.data.__main__ import main
from recbole_prorec.data.atomic import ConversionStats, kcore_filter, user_sequences, write_atomic_files


def write_lines(path, lines):
    """Write text lines to `path`, gzip-compressed when it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines))
    return path


def read_table(path):
    """(header, rows) of an atomic file, split on tabs exactly as RecBole and our semantic reader do."""
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    return header.split("\t"), [row.split("\t") for row in rows]


def read_items(folder, name):
    header, rows = read_table(folder / f"{name}.item")
    names = [column.split(":")[0] for column in header]
    return header, {row[0]: dict(zip(names, row)) for row in rows}


def review_2014(user, item, time):
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": time, "overall": 5.0})


def make_2014(folder, reviews, metas, category="Beauty"):
    """A 2014 layout: reviews as JSON lines, metadata as Python literals (single quotes), both gzipped."""
    folder.mkdir(exist_ok=True)
    write_lines(folder / f"reviews_{category}_5.json.gz", [review_2014(*review) for review in reviews])
    write_lines(folder / f"meta_{category}.json.gz", [repr(meta) for meta in metas])
    return folder


# --- P5-style folders ------------------------------------------------------------------------------------------


def test_p5_folder_positions_become_timestamps_and_meta_is_cleaned(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / "user_sequence.txt", ["u1 i1 i2 i3", "u2 i3 i1"])
    meta = {
        "i1": {
            "p5_item_id": 1,
            "title": "Kirk&#39;s\tSoap &amp;\nMore",
            "brand": "K&amp;#39;s",  # escaped twice
            "categories": [["Beauty", "Skin"], ["Bath"]],
        },
        "i2": {"title": None, "categories": [["Beauty"]], "brand": None},
        "i3": {"title": "Plain", "categories": [], "brand": "B"},
        "unused": {"title": "not interacted"},
    }
    (raw / "item_meta_by_asin.DERIVED.json").write_text(json.dumps(meta))

    stats = convert(raw, tmp_path / "out", "beauty", fmt="p5")

    folder = tmp_path / "out" / "beauty"
    header, rows = read_table(folder / "beauty.inter")
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    assert rows == [["u1", "i1", "0"], ["u1", "i2", "1"], ["u1", "i3", "2"], ["u2", "i3", "0"], ["u2", "i1", "1"]]
    header, items = read_items(folder, "beauty")
    assert header == ["item_id:token", "title:token_seq", "brand:token_seq", "categories:token_seq"]
    assert list(items) == ["i1", "i2", "i3"]
    assert items["i1"] == {
        "item_id": "i1",
        "title": "Kirk's Soap & More",
        "brand": "K's",
        "categories": "Beauty > Skin | Bath",
    }
    assert items["i2"]["title"] == "" and items["i3"]["categories"] == ""
    assert stats.as_dict() == {
        "format": "p5",
        "n_users": 2,
        "n_items": 3,
        "n_interactions": 5,
        "n_items_with_title": 2,
        "skipped_lines": 0,
        "duplicates": 0,
        "kcore_removed": 0,
    }


def test_p5_folder_without_metadata_writes_empty_text_and_says_so(tmp_path, caplog):
    raw = tmp_path / "sports"
    raw.mkdir()
    write_lines(raw / "user_sequence.txt", ["u1 a b", "u2 b a"])
    with caplog.at_level(logging.WARNING, logger="recbole_prorec.data"):
        stats = convert(raw, tmp_path / "out")  # name defaults to the folder's
    header, items = read_items(tmp_path / "out" / "sports", "sports")
    assert header == ["item_id:token", "title:token_seq", "brand:token_seq", "categories:token_seq"]
    assert items["a"] == {"item_id": "a", "title": "", "brand": "", "categories": ""}
    assert stats.n_items_with_title == 0
    assert "no item metadata" in caplog.text


def test_p5_keyword_file_becomes_a_keywords_column_and_a_bad_line_names_the_file(tmp_path, caplog):
    raw = tmp_path / "sports"
    raw.mkdir()
    write_lines(raw / "user_sequence.txt", ["u1 a b c", "u2 b a"])
    write_lines(raw / "item_generative_indexing_phase_0.txt", ["b jump rope  olympic", "a yoga &amp; mats", "z unused"])
    with caplog.at_level(logging.WARNING, logger="recbole_prorec.data"):
        convert(raw, tmp_path / "out")
    header, items = read_items(tmp_path / "out" / "sports", "sports")
    assert header[-1] == "keywords:token_seq"
    assert items["a"]["keywords"] == "yoga & mats" and items["b"]["keywords"] == "jump rope olympic"
    assert items["c"]["keywords"] == "" and items["a"]["title"] == ""  # no keywords line, no metadata
    assert "no item metadata" not in caplog.text
    write_lines(raw / "item_generative_indexing_phase_0.txt", ["b jump rope", "a"])
    with pytest.raises(ConversionError, match=r"item_generative_indexing_phase_0.txt, line 2: .*no keywords"):
        convert(raw, tmp_path / "again")
    assert not (tmp_path / "again" / "sports").exists() or not any((tmp_path / "again" / "sports").iterdir())


def test_p5_metadata_passed_explicitly_and_several_candidates_rejected(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / "user_sequence.txt", ["u1 a b"])
    (raw / "item_meta.json").write_text(json.dumps({"a": {"title": "From item_meta"}}))
    (raw / "meta_items.json").write_text(json.dumps({"a": {"title": "From meta"}}))
    with pytest.raises(ConversionError, match="several item metadata files"):
        convert(raw, tmp_path / "out", "x")
    convert(raw, tmp_path / "out", "x", meta=raw / "meta_items.json")
    assert read_items(tmp_path / "out" / "x", "x")[1]["a"]["title"] == "From meta"


# --- McAuley releases -------------------------------------------------------------------------------------------


def test_2014_release_sorts_by_time_keeping_file_order_on_ties(tmp_path):
    reviews = [("u1", "z", 200), ("u1", "c", 100), ("u1", "a", 200), ("u1", "b", 50), ("u2", "a", 7)]
    metas = [
        {
            "asin": "z",
            "title": "Zed &amp; co",
            "categories": [["Beauty", "Nails"]],
            "brand": "ZB",
            "price": 3.5,
            "description": "Line one\nline\ttwo",
            "related": {"also_bought": ["a"]},
        },
        {"asin": "a", "title": "Ay", "categories": [["Beauty"], ["Gifts", "Sets"]]},
        {"asin": "c", "categories": [["Beauty"]]},
    ]
    make_2014(tmp_path / "raw", reviews, metas)

    stats = convert(tmp_path / "raw", tmp_path / "out", "b", kcore=0)

    _, rows = read_table(tmp_path / "out" / "b" / "b.inter")
    assert [row[1] for row in rows if row[0] == "u1"] == ["b", "c", "z", "a"]  # z before a: file order on the tie
    assert rows[0] == ["u1", "b", "50"]
    header, items = read_items(tmp_path / "out" / "b", "b")
    assert header[-2:] == ["description:token_seq", "price:float"]
    assert items["z"]["title"] == "Zed & co" and items["z"]["description"] == "Line one line two"
    assert items["z"]["price"] == "3.5" and items["a"]["price"] == ""
    assert items["a"]["categories"] == "Beauty | Gifts > Sets"
    assert items["b"]["title"] == "" and items["c"]["title"] == ""  # b has no metadata, c no title
    assert stats.format == "2014" and stats.n_items_with_title == 2


def test_2018_release(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / "Toys_5.json.gz", [review_2014("u1", "b", 20), review_2014("u1", "a", 10)])
    metas = [
        {
            "asin": "a",
            "title": "Toy",
            "category": ["Toys &amp; Games", "Puzzles"],
            "brand": "T",
            "description": ["First.", "Second."],
            "price": "$1,299.00",
        },
        {"asin": "b", "title": "Other", "category": [], "price": "$5.99 - $9.99"},
    ]
    write_lines(raw / "meta_Toys.json.gz", [json.dumps(meta) for meta in metas])

    stats = convert(raw, tmp_path / "out", "toys", kcore=0)

    _, rows = read_table(tmp_path / "out" / "toys" / "toys.inter")
    assert rows == [["u1", "a", "10"], ["u1", "b", "20"]]
    _, items = read_items(tmp_path / "out" / "toys", "toys")
    assert items["a"] == {
        "item_id": "a",
        "title": "Toy",
        "brand": "T",
        "categories": "Toys & Games > Puzzles",
        "description": "First. Second.",
        "price": "1299",
    }
    assert items["b"]["price"] == ""  # a price range is not one amount
    assert stats.format == "2018"


def test_2023_release_uses_parent_asin_and_millisecond_timestamps(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    reviews = [
        {"user_id": "U1", "asin": "child2", "parent_asin": "P2", "timestamp": 1588687728923},
        {"user_id": "U1", "asin": "child1", "parent_asin": "P1", "timestamp": 1588000000000},
    ]
    write_lines(raw / "All_Beauty.jsonl.gz", [json.dumps(review) for review in reviews])
    metas = [{"parent_asin": "P1", "title": "One", "store": "Shop", "categories": ["Beauty", "Hair"], "price": None}]
    write_lines(raw / "meta_All_Beauty.jsonl.gz", [json.dumps(meta) for meta in metas])

    stats = convert(raw, tmp_path / "out", "b23", kcore=0)

    _, rows = read_table(tmp_path / "out" / "b23" / "b23.inter")
    assert rows == [["U1", "P1", "1588000000"], ["U1", "P2", "1588687728.923"]]
    _, items = read_items(tmp_path / "out" / "b23", "b23")
    assert items["P1"] == {"item_id": "P1", "title": "One", "brand": "Shop", "categories": "Beauty > Hair"}
    assert stats.format == "2023" and stats.n_items_with_title == 1


def test_detect_format_names_each_layout(tmp_path):
    layouts = {
        "p5": ["user_sequence.txt", "item_meta.json"],
        "2014": ["reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"],
        "2018": ["Beauty_5.json.gz", "meta_Beauty.json.gz"],
        "2023": ["Beauty.jsonl.gz", "meta_Beauty.jsonl.gz"],
    }
    for fmt, (interactions, meta) in layouts.items():
        folder = tmp_path / fmt
        folder.mkdir()
        (folder / interactions).touch()
        (folder / meta).touch()
        source = detect_format(folder)
        assert (source.format, source.interactions.name, source.meta.name) == (fmt, interactions, meta)
        assert detect_format(folder / interactions).format == fmt
    assert detect_format(tmp_path / "2014", fmt="2023") is None
    (tmp_path / "2014" / "reviews_Toys_5.json.gz").touch()
    with pytest.raises(ConversionError, match="several raw datasets"):
        detect_format(tmp_path / "2014")


# --- malformed input, duplicates, k-core ------------------------------------------------------------------------


MALFORMED = {
    "p5": ("user_sequence.txt", ["u1 a b", "u2", "u3 a b"]),
    "2014": ("reviews_X_5.json.gz", [review_2014("u1", "a", 1), '{"reviewerID": "u2"', review_2014("u3", "a", 1)]),
    "2018": ("X_5.json.gz", [review_2014("u1", "a", 1), json.dumps({"reviewerID": "u2"}), review_2014("u3", "a", 1)]),
    "2023": (
        "X.jsonl.gz",
        [
            json.dumps({"user_id": "u1", "parent_asin": "a", "timestamp": 1}),
            "[1, 2]",
            json.dumps({"user_id": "u3", "parent_asin": "a", "timestamp": 1}),
        ],
    ),
}


@pytest.mark.parametrize("fmt", sorted(MALFORMED))
def test_malformed_line_names_file_and_line_or_is_skipped_and_counted(tmp_path, fmt):
    file_name, lines = MALFORMED[fmt]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / file_name, [lines[0], "", lines[1], lines[2]])  # blank lines are not malformed
    with pytest.raises(ConversionError, match=rf"{file_name}, line 3: malformed line") as error:
        convert(raw, tmp_path / "out", "x", kcore=0)
    assert "skip_malformed" in str(error.value)
    assert not (tmp_path / "out" / "x").exists()

    stats = convert(raw, tmp_path / "out", "x", kcore=0, skip_malformed=True)
    assert (stats.skipped_lines, stats.n_users, stats.n_interactions) == (1, 2, 2 if fmt != "p5" else 4)


def test_malformed_2014_meta_line_is_named(tmp_path):
    raw = tmp_path / "raw"
    make_2014(raw, [("u1", "a", 1)], [{"asin": "a", "title": "ok"}])
    code = "{'asin': 'a', 'title': __import__('os')}"  # never evaluated
    write_lines(raw / "meta_Beauty.json.gz", ["{'asin': 'a', 'title': 'ok'}", code])
    with pytest.raises(ConversionError, match=r"meta_Beauty.json.gz, line 2: .*Python literal"):
        convert(raw, tmp_path / "out", "x", kcore=0)


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_gzip_input_is_named_and_nothing_is_written(tmp_path, damage):
    raw = tmp_path / "raw"
    make_2014(raw, [(f"u{i}", f"i{i % 7}", i) for i in range(2000)], [{"asin": "i1", "title": "ok"}])
    reviews = raw / "reviews_Beauty_5.json.gz"
    data = reviews.read_bytes()
    reviews.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:20] + b"\x00" * 64 + data[84:])
    with pytest.raises(ConversionError, match=r"reviews_Beauty_5.json.gz: unreadable gzip file, truncated or corrupt"):
        convert(raw, tmp_path / "out", "beauty", kcore=0)
    assert not (tmp_path / "out").exists()


def test_repeated_user_item_pairs_keep_the_earliest_and_are_counted(tmp_path, caplog):
    raw = tmp_path / "raw"
    make_2014(raw, [("u1", "a", 30), ("u1", "b", 20), ("u1", "a", 10), ("u1", "a", 10)], [])
    with caplog.at_level(logging.INFO, logger="recbole_prorec.data"):
        stats = convert(raw, tmp_path / "out", "x", kcore=0)
    _, rows = read_table(tmp_path / "out" / "x" / "x.inter")
    assert rows == [["u1", "a", "10"], ["u1", "b", "20"]]
    assert stats.duplicates == 2
    assert "2 repeated" in caplog.text


def test_kcore_filtering_iterates_until_stable(tmp_path):
    # k=2: u4 (1 review) goes first; then c has 1 review left, so it goes; then u3 has 1 item left, so it goes.
    reviews = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2)]
    reviews += [("u3", "b", 1), ("u3", "c", 2), ("u4", "c", 1)]
    raw = tmp_path / "raw"
    make_2014(raw, reviews, [])
    stats = convert(raw, tmp_path / "out", "x", kcore=2)
    _, rows = read_table(tmp_path / "out" / "x" / "x.inter")
    assert {row[0] for row in rows} == {"u1", "u2"} and {row[1] for row in rows} == {"a", "b"}
    assert stats.kcore_removed == 3 and stats.n_items == 2

    with pytest.raises(ConversionError, match="no interactions left"):
        convert(raw, tmp_path / "out", "y")  # default 5-core for raw files removes everything


def test_kcore_filter_keeps_a_stable_core_unchanged():
    stats = ConversionStats()
    sequences = {"u1": [("a", 0), ("b", 1)], "u2": [("a", 0), ("b", 1)]}
    assert kcore_filter(sequences, 2, stats) == sequences and stats.kcore_removed == 0


def test_user_sequences_sort_stably_by_time():
    interactions = [("u", "a", 1.0), ("v", "x", 0.0), ("u", "b", 1.0), ("u", "c", 0.0)]
    expected = {"u": [("c", 0.0), ("a", 1.0), ("b", 1.0)], "v": [("x", 0.0)]}
    assert user_sequences(interactions, ConversionStats()) == expected


# --- atomic writes and ensure_atomic_files ----------------------------------------------------------------------


def test_failed_write_leaves_existing_output_untouched_and_no_temporary_files(tmp_path):
    good = {"u1": [("a", 0), ("b", 1)]}
    folder = write_atomic_files(tmp_path, "x", good, {"a": {"title": "A"}}, ConversionStats())
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    broken = {"u1": [("a", 0), ("b", 1)], "u2": [("a", "not a number")]}  # fails mid-way through the .inter
    with pytest.raises(ValueError):
        write_atomic_files(tmp_path, "x", broken, {"a": {"title": "New"}}, ConversionStats())
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_ensure_atomic_files_returns_existing_folder_without_converting(tmp_path):
    folder = tmp_path / "ready"
    folder.mkdir()
    (folder / "ready.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    assert ensure_atomic_files(tmp_path, "ready") == folder


def test_ensure_atomic_files_converts_raw_files(tmp_path):
    raw = tmp_path / "downloads"
    raw.mkdir()
    write_lines(raw / "user_sequence.txt", ["u1 a b c"])
    folder = ensure_atomic_files(tmp_path / "data", "amazon-x", raw_path=raw)
    assert folder == tmp_path / "data" / "amazon-x"
    assert read_table(folder / "amazon-x.inter")[1][-1] == ["u1", "c", "2"]


def test_ensure_atomic_files_error_says_which_files_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        ensure_atomic_files(tmp_path, "amazon-beauty")
    message = str(error.value)
    folder = tmp_path / "amazon-beauty"
    for expected in (
        f"{folder}/amazon-beauty.inter",
        f"{folder}/user_sequence.txt",
        f"{folder}/reviews_<Category>_5.json.gz",
        f"{folder}/meta_<Category>.json.gz",
        f"{folder}/<Category>_5.json.gz",
        f"{folder}/<Category>.jsonl.gz",
        f"{folder}/meta_<Category>.jsonl.gz",
        "ratings-only",
    ):
        assert expected in message


def test_cli_converts_and_reports_errors(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / "user_sequence.txt", ["u1 a b", "u2"])
    assert main(["p5", str(raw), "--out", str(tmp_path / "out"), "--name", "x"]) == 1
    assert "user_sequence.txt, line 2" in capsys.readouterr().err
    assert main(["p5", str(raw), "--out", str(tmp_path / "out"), "--name", "x", "--skip-malformed"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_lines"] == 1
