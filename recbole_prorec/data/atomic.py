"""Interactions + item text -> RecBole atomic files `<out>/<name>/<name>.inter` and `<name>.item`.

Ordering, de-duplication and k-core filtering happen here once for every input format. Both files are written to
temporary files in the target folder and moved into place with `os.replace` only when both are complete, `.inter`
last: an existing `.inter` therefore always belongs to a complete conversion.
"""

import collections
import dataclasses
import os
import pathlib
import secrets

INTER_HEADER = ("user_id:token", "item_id:token", "timestamp:float")
TEXT_COLUMNS = ("title", "brand", "categories")  # always written, empty where unknown
OPTIONAL_TEXT_COLUMNS = ("description", "keywords")  # written when any item has one


@dataclasses.dataclass
class ConversionStats:
    """What a conversion produced and dropped."""

    format: str = ""
    n_users: int = 0
    n_items: int = 0
    n_interactions: int = 0
    n_items_with_title: int = 0
    skipped_lines: int = 0  # malformed input lines (or metadata entries) skipped with skip_malformed
    duplicates: int = 0  # repeated (user, item) pairs dropped, the earliest kept
    kcore_removed: int = 0  # interactions removed by k-core filtering

    def as_dict(self):
        return dataclasses.asdict(self)


def user_sequences(interactions, stats):
    """{user: [(item, timestamp), ...]} in order of users' first appearance, each sorted by time.

    The sort is stable, so equal timestamps keep file order (the 2014 files have day resolution: ties are
    frequent). A repeated (user, item) pair keeps its earliest interaction; the others are counted in `stats`.
    """
    grouped = collections.defaultdict(list)
    for user, item, timestamp in interactions:
        grouped[user].append((item, timestamp))
    sequences = {}
    for user, events in grouped.items():
        events.sort(key=lambda event: event[1])
        earliest = {}
        for item, timestamp in events:
            earliest.setdefault(item, timestamp)
        sequences[user] = list(earliest.items())
        stats.duplicates += len(events) - len(earliest)
    return sequences


def kcore_filter(sequences, k, stats):
    """Keep only users and items with at least `k` interactions, repeating until nothing changes."""
    if k <= 1:
        return sequences
    while True:
        n_before = sum(map(len, sequences.values()))
        item_degree = collections.Counter(item for events in sequences.values() for item, _ in events)
        sequences = {
            user: kept
            for user, events in sequences.items()
            if len(events) >= k and (kept := [event for event in events if item_degree[event[0]] >= k])
        }
        n_after = sum(map(len, sequences.values()))
        stats.kcore_removed += n_before - n_after
        if n_after == n_before:  # no interaction removed: every remaining user and item has degree >= k
            return sequences


def _number(value):
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _write_temporary(path, lines):
    """Write `lines` to a new temporary file beside `path` and return its path; nothing is left behind on error."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    file = open(temporary, "x", encoding="utf-8", newline="\n")
    try:
        with file:
            for line in lines:
                file.write(line + "\n")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_atomic_files(out, name, sequences, item_meta, stats):
    """Write `<out>/<name>/<name>.inter` and `.item` atomically; return the folder.

    `sequences` as from `user_sequences`; `item_meta`: {item: item_fields(...)} (items without an entry get
    empty text). The .item file lists exactly the items of the .inter file, in order of first appearance.
    """
    folder = pathlib.Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    items = list(dict.fromkeys(item for events in sequences.values() for item, _ in events))
    empty = dict.fromkeys(TEXT_COLUMNS + OPTIONAL_TEXT_COLUMNS, "")
    metas = [item_meta.get(item, empty) for item in items]
    columns = list(TEXT_COLUMNS) + [c for c in OPTIONAL_TEXT_COLUMNS if any(m.get(c) for m in metas)]
    with_price = any(meta.get("price") is not None for meta in metas)

    def item_lines():
        price_header = ["price:float"] if with_price else []
        yield "\t".join(["item_id:token", *(f"{column}:token_seq" for column in columns), *price_header])
        for item, meta in zip(items, metas):
            price = [_number(meta["price"]) if meta.get("price") is not None else ""] if with_price else []
            yield "\t".join([item, *(meta.get(column, "") for column in columns), *price])

    def inter_lines():
        yield "\t".join(INTER_HEADER)
        for user, events in sequences.items():
            for item, timestamp in events:
                yield f"{user}\t{item}\t{_number(timestamp)}"

    targets = [folder / f"{name}.item", folder / f"{name}.inter"]  # .inter last: it marks a complete conversion
    temporaries = []
    try:
        for target, lines in zip(targets, (item_lines(), inter_lines())):
            temporaries.append(_write_temporary(target, lines))
    except BaseException:
        for temporary in temporaries:
            temporary.unlink()
        raise
    for temporary, target in zip(temporaries, targets):
        os.replace(temporary, target)

    stats.n_users = len(sequences)
    stats.n_items = len(items)
    stats.n_interactions = sum(map(len, sequences.values()))
    stats.n_items_with_title = sum(1 for meta in metas if meta.get("title"))
    return folder
