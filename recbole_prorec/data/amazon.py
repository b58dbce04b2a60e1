"""Readers for the Amazon review datasets in the layouts generative-recommendation papers use.

- "p5": a folder with `user_sequence.txt` (`<user> <item_1> ... <item_n>`: one line per user, items in time order;
  S3-Rec/P5/TIGER) and optional item metadata as one JSON object keyed by item id (`item_meta*.json` or `meta*.json`),
  and/or generated keyword text, one `<item> <keywords ...>` line per item (`item_generative_indexing*.txt`, IDGenRec;
  written as the `keywords` column: keywords produced by a model from the item's text, not a title).
- "2014": McAuley's `reviews_<Category>_5.json.gz` (JSON lines) + `meta_<Category>.json.gz` (Python literals).
  J. McAuley et al., Image-based recommendations on styles and substitutes, SIGIR 2015.
- "2018": `<Category>_5.json.gz` + `meta_<Category>.json.gz`, both JSON lines.
  J. Ni, J. Li, J. McAuley, Justifying recommendations using distantly-labeled reviews, EMNLP 2019.
- "2023": `<Category>.jsonl.gz` + `meta_<Category>.jsonl.gz`, keyed by `parent_asin`, timestamps in ms.
  Y. Hou et al., Bridging language and items for retrieval and recommendation, arXiv:2403.03952.

Every reader yields `(user, item, timestamp)` in file order and `{item: item_fields(...)}`; ordering, duplicates
and k-core filtering are done once, downstream, for all formats.
"""

import ast
import dataclasses
import gzip
import json
import math
import pathlib
import re
import zlib

from tqdm import tqdm

from recbole_prorec.data.text import clean_text, item_fields

P5_SEQUENCES = "user_sequence.txt"
P5_META_PATTERNS = ("item_meta*.json", "meta*.json")
P5_KEYWORDS_PATTERN = "item_generative_indexing*.txt"
_WHITESPACE = re.compile(r"\s")


class ConversionError(ValueError):
    """Input that cannot be converted; the message names the file (and line) and what was expected."""


@dataclasses.dataclass(frozen=True)
class AmazonRelease:
    """File naming and field names of one McAuley-lab release."""

    name: str
    reviews_pattern: re.Pattern  # file name of the review file; group "category"
    meta_name: str  # meta file name, formatted with the category; ".gz" optional
    user_key: str
    item_key: str
    time_key: str
    seconds_per_time_unit: float
    meta_item_key: str
    parse_meta: object  # callable: one line of text -> Python object


RELEASES = {
    release.name: release
    for release in (
        AmazonRelease(
            "2014",
            re.compile(r"^reviews_(?P<category>.+)_5\.json(\.gz)?$"),
            "meta_{category}.json",
            "reviewerID",
            "asin",
            "unixReviewTime",
            1.0,
            "asin",
            ast.literal_eval,
        ),
        AmazonRelease(
            "2018",
            re.compile(r"^(?!reviews_|meta_)(?P<category>.+)_5\.json(\.gz)?$"),
            "meta_{category}.json",
            "reviewerID",
            "asin",
            "unixReviewTime",
            1.0,
            "asin",
            json.loads,
        ),
        AmazonRelease(
            "2023",
            re.compile(r"^(?!meta_)(?P<category>.+)\.jsonl(\.gz)?$"),
            "meta_{category}.jsonl",
            "user_id",
            "parent_asin",
            "timestamp",
            1e-3,
            "parent_asin",
            json.loads,
        ),
    )
}
FORMATS = ("p5", *RELEASES)


@dataclasses.dataclass(frozen=True)
class RawSource:
    """Where a dataset's raw files are: `format` in FORMATS, the interactions file, the metadata file or None."""

    format: str
    interactions: pathlib.Path
    meta: pathlib.Path | None
    keywords: pathlib.Path | None = None  # p5 only: generated keyword text per item


def _match_file(path, formats, meta):
    """RawSource for one interactions file if its name fits one of `formats`, else None.

    The metadata file is `meta` if given, else the one found by name beside `path` (or None).
    """
    if "p5" in formats and path.name == P5_SEQUENCES:
        keywords = _find_one(path.parent, (P5_KEYWORDS_PATTERN,), "keyword files", "")
        return RawSource("p5", path, meta or _find_p5_meta(path.parent), keywords)
    for name in formats:
        release = RELEASES.get(name)
        match = release and release.reviews_pattern.match(path.name)
        if match:
            meta_name = release.meta_name.format(category=match["category"])
            metas = [path.parent / f"{meta_name}.gz", path.parent / meta_name]
            return RawSource(name, path, meta or next((found for found in metas if found.is_file()), None))
    return None


def detect_format(path, fmt="auto", meta=None):
    """Find the raw files at `path` (a folder or an interactions file) -> RawSource, or None if none fit.

    `fmt` restricts the search to one format ("auto": any). `meta` overrides the metadata file found by name.
    A folder holding several candidate files (e.g. two categories) is ambiguous: pass the file itself.
    """
    path = pathlib.Path(path)
    meta = pathlib.Path(meta) if meta is not None else None
    formats = FORMATS if fmt == "auto" else (fmt,)
    if fmt not in FORMATS + ("auto",):
        raise ValueError(f"Unknown format '{fmt}'; expected one of: auto, {', '.join(FORMATS)}.")
    if path.is_file():
        source = _match_file(path, formats, meta)
        if source is None and fmt != "auto":  # an explicitly named format accepts any file name
            source = RawSource(fmt, path, meta)
        return source
    files = sorted(file for file in path.glob("*") if file.is_file())
    candidates = [source for file in files if (source := _match_file(file, formats, meta))]
    if len(candidates) > 1:
        raise ConversionError(
            f"{path}: several raw datasets found ({', '.join(c.interactions.name for c in candidates)}); "
            "pass the interactions file itself."
        )
    return candidates[0] if candidates else None


def _find_one(folder, patterns, what="item metadata files", option="--meta"):
    """The one file of `folder` matching `patterns`, None if there is none, an error if several."""
    found = sorted({file for pattern in patterns for file in folder.glob(pattern)})
    if len(found) > 1:
        raise ConversionError(f"{folder}: several {what} ({', '.join(f.name for f in found)}); choose one{option}.")
    return found[0] if found else None


def _find_p5_meta(folder):
    return _find_one(folder, P5_META_PATTERNS, option=" with --meta")


def _parsed_lines(path, parse, what, stats, skip_malformed):
    """Yield what `parse(line_text)` returns for each non-blank line; malformed lines raise or are counted.

    A file that cannot be read to its end (a truncated or corrupt gzip stream, an I/O error) is a
    `ConversionError` naming it: conversion writes its output only after every input has been read.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as lines:
            for line_no, raw in enumerate(tqdm(lines, desc=path.name, unit=" lines", disable=None, leave=False), 1):
                if not raw.strip():
                    continue
                try:
                    parsed = parse(raw.decode("utf-8"))
                except (ValueError, SyntaxError, TypeError, KeyError, RecursionError) as error:
                    if not skip_malformed:
                        raise ConversionError(
                            f"{path}, line {line_no}: malformed line ({type(error).__name__}: {error}); expected "
                            f"{what}. Pass skip_malformed=True (CLI: --skip-malformed) to skip such lines."
                        ) from error
                    stats.skipped_lines += 1
                    continue
                yield from parsed
    except (EOFError, OSError, zlib.error) as error:
        kind = "gzip file" if path.suffix == ".gz" else "file"
        raise ConversionError(
            f"{path}: unreadable {kind}, truncated or corrupt ({type(error).__name__}: {error}); replace it with a "
            "complete copy. Nothing was written."
        ) from error


def _token(record, key):
    """A required id field as a string usable as a RecBole token (no whitespace)."""
    if not isinstance(record, dict):
        raise TypeError(f"a {type(record).__name__}, not an object")
    value = record.get(key)
    if value is None or str(value).strip() == "":
        raise KeyError(f"missing '{key}'")
    value = str(value).strip()
    if _WHITESPACE.search(value):
        raise ValueError(f"'{key}' {value!r} contains whitespace")
    return value


def _p5_parser():
    """Parser of `user_sequence.txt` lines; a user's second line is malformed (its positions would restart at 0
    and interleave with the first line's in the time sort)."""
    seen = set()

    def parse(text):
        user, *items = text.split()
        if not items:
            raise ValueError("a user without items")
        if user in seen:
            raise ValueError(f"user {user!r} already had a line; one line per user")
        seen.add(user)
        return [(user, item, float(position)) for position, item in enumerate(items)]

    return parse


def _review_parser(release):
    def parse(text):
        record = json.loads(text)
        user, item = _token(record, release.user_key), _token(record, release.item_key)
        timestamp = float(record[release.time_key]) * release.seconds_per_time_unit
        if not math.isfinite(timestamp):
            raise ValueError(f"'{release.time_key}' is not a finite number")
        return [(user, item, timestamp)]

    return parse


def read_interactions(source, stats, skip_malformed=False):
    """All (user, item, timestamp) of `source` in file order; P5 timestamps are positions in the sequence."""
    if source.format == "p5":
        parse, what = _p5_parser(), "'<user_id> <item_id> <item_id> ...' separated by whitespace"
    else:
        release = RELEASES[source.format]
        parse = _review_parser(release)
        what = f"a JSON object with '{release.user_key}', '{release.item_key}' and numeric '{release.time_key}'"
    return list(_parsed_lines(source.interactions, parse, what, stats, skip_malformed))


def _read_p5_meta(path, stats, skip_malformed):
    """The P5-style metadata: one JSON object {item_id: {title, brand, categories, ...}}."""
    try:
        with open(path, encoding="utf-8") as file:
            records = json.load(file)
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}).") from error
    if not isinstance(records, dict):
        raise ConversionError(f"{path}: expected a JSON object keyed by item id, got a {type(records).__name__}.")
    metas = {}
    for item, record in records.items():
        if not isinstance(record, dict):
            if not skip_malformed:
                raise ConversionError(
                    f"{path}, key '{item}': expected an object with title/brand/categories, "
                    f"got a {type(record).__name__}. Pass skip_malformed=True (CLI: --skip-malformed) to skip it."
                )
            stats.skipped_lines += 1
            continue
        metas[item] = item_fields(record)
    return metas


def _read_p5_keywords(path, items, stats, skip_malformed):
    """{item: cleaned keyword text} from `<item> <keywords ...>` lines, for the `items` wanted."""

    def parse(text):
        item, _, keywords = text.strip().partition(" ")
        if not keywords.strip():
            raise ValueError("no keywords after the item id")
        return [(item, clean_text(keywords))] if item in items else []

    keywords = {}
    for item, text in _parsed_lines(path, parse, "'<item_id> <keyword> <keyword> ...'", stats, skip_malformed):
        keywords.setdefault(item, text)
    return keywords


def read_item_meta(source, items, stats, skip_malformed=False):
    """{item: item_fields} for the `items` wanted (others are not kept); first record wins for repeated ids.

    A p5 source's keyword file adds a `keywords` field (items without metadata get empty other fields).
    """
    if source.format == "p5":
        metas = _read_p5_meta(source.meta, stats, skip_malformed) if source.meta is not None else {}
        metas = {item: metas[item] for item in items if item in metas}
        if source.keywords is not None:
            empty = item_fields({})
            for item, text in _read_p5_keywords(source.keywords, items, stats, skip_malformed).items():
                metas[item] = {**metas.get(item, empty), "keywords": text}
        return metas
    if source.meta is None:
        return {}
    release = RELEASES[source.format]

    def parse(text):
        record = release.parse_meta(text)
        item = _token(record, release.meta_item_key)
        return [(item, item_fields(record))] if item in items else []

    metas = {}
    what = f"one {'Python literal' if release.name == '2014' else 'JSON object'} with '{release.meta_item_key}'"
    for item, fields in _parsed_lines(source.meta, parse, what, stats, skip_malformed):
        metas.setdefault(item, fields)
    return metas
