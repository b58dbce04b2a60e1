"""One conversion pipeline for every format: read -> order and de-duplicate -> k-core -> item text -> atomic files."""

import logging
import pathlib

from recbole_prorec.data.amazon import ConversionError, detect_format, read_interactions, read_item_meta
from recbole_prorec.data.atomic import ConversionStats, kcore_filter, user_sequences, write_atomic_files

logger = logging.getLogger(__name__)

DEFAULT_KCORE = {"p5": 0}  # P5 folders are the published 5-core benchmark already: keep them as they are
RAW_DEFAULT_KCORE = 5


def convert(source, out, name=None, *, fmt="auto", meta=None, kcore=None, skip_malformed=False):
    """Convert the raw dataset at `source` (folder or interactions file) into `<out>/<name>/` atomic files.

    fmt: "auto" or one of FORMATS; meta: metadata file overriding the one found by name; kcore: minimum
    interactions per user and item, applied iteratively after de-duplication (default 5 for the raw review
    files, 0 = off for P5 folders); skip_malformed: skip and count malformed lines instead of raising
    ConversionError. Returns ConversionStats.
    """
    source_path = pathlib.Path(source)
    raw = detect_format(source_path, fmt=fmt, meta=meta)
    if raw is None:
        raise FileNotFoundError(f"No raw dataset found at {source_path}.\n{raw_files_help(source_path)}")
    name = name or (source_path if source_path.is_dir() else source_path.parent).resolve().name
    kcore = DEFAULT_KCORE.get(raw.format, RAW_DEFAULT_KCORE) if kcore is None else kcore
    stats = ConversionStats(format=raw.format)
    logger.info("Converting %s (format %s, metadata %s) into %s", raw.interactions, raw.format, raw.meta, out)

    sequences = user_sequences(read_interactions(raw, stats, skip_malformed), stats)
    sequences = kcore_filter(sequences, kcore, stats)
    if not sequences:
        raise ConversionError(
            f"{raw.interactions}: no interactions left (k-core {kcore}, {stats.skipped_lines} lines skipped)."
        )
    items = {item for events in sequences.values() for item, _ in events}
    item_meta = read_item_meta(raw, items, stats, skip_malformed)
    if raw.meta is None and raw.keywords is None:
        logger.warning("%s: no item metadata found; the .item file has empty title/brand/categories.", source_path)
    folder = write_atomic_files(out, name, sequences, item_meta, stats)

    if stats.duplicates:
        logger.info("Dropped %d repeated (user, item) interactions, keeping the earliest.", stats.duplicates)
    if stats.skipped_lines:
        logger.warning("Skipped %d malformed lines.", stats.skipped_lines)
    if stats.kcore_removed:
        logger.info("%d-core filtering removed %d interactions.", kcore, stats.kcore_removed)
    if stats.n_items_with_title < stats.n_items:
        n_untitled = stats.n_items - stats.n_items_with_title
        logger.info("%d of %d items have no title (empty field).", n_untitled, stats.n_items)
    logger.info(
        "Wrote %s: %d users, %d items, %d interactions.", folder, stats.n_users, stats.n_items, stats.n_interactions
    )
    return stats


def raw_files_help(raw_path):
    """Which files to put where, for each supported format."""
    raw = pathlib.Path(raw_path)
    return "\n".join(
        [
            f"Put the raw files of one of these formats into {raw}/:",
            f"  - p5: {raw}/user_sequence.txt ('<user> <item> <item> ...' in time order), optionally with item "
            f"metadata {raw}/item_meta*.json or {raw}/meta*.json ({{item_id: {{title, brand, categories}}}}) and/or "
            f"keyword text {raw}/item_generative_indexing*.txt ('<item> <keywords ...>' per line);",
            f"  - 2014 (http://jmcauley.ucsd.edu/data/amazon/): {raw}/reviews_<Category>_5.json.gz and "
            f"{raw}/meta_<Category>.json.gz;",
            f"  - 2018 (https://nijianmo.github.io/amazon/): {raw}/<Category>_5.json.gz and "
            f"{raw}/meta_<Category>.json.gz;",
            f"  - 2023 (https://amazon-reviews-2023.github.io/): {raw}/<Category>.jsonl.gz and "
            f"{raw}/meta_<Category>.jsonl.gz.",
            "Note: RecBole's own amazon-beauty download is ratings-only (no titles, brands or categories), so it "
            "cannot provide the item text that semantic IDs need.",
        ]
    )


def ensure_atomic_files(data_path, dataset_name, raw_path=None):
    """Return `<data_path>/<dataset_name>/`, converting raw files into it first when its .inter is missing.

    Raw files are looked for in `raw_path` (default: that same folder), in any supported format.
    Raises FileNotFoundError saying which files to put where when there are none.
    """
    folder = pathlib.Path(data_path) / dataset_name
    if (folder / f"{dataset_name}.inter").is_file():
        return folder
    raw = pathlib.Path(raw_path) if raw_path is not None else folder
    if not raw.exists() or detect_format(raw) is None:
        raise FileNotFoundError(
            f"Dataset '{dataset_name}' has no atomic files: {folder / f'{dataset_name}.inter'} is missing and no raw "
            f"files were found.\n{raw_files_help(raw)}\n"
            f"Alternatively, put ready RecBole atomic files at {folder}/{dataset_name}.inter (and .item)."
        )
    convert(raw, data_path, dataset_name)
    return folder
