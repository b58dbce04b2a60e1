"""Item-text cleaning: one normalizer for the metadata records of every supported Amazon release.

The atomic files are read with `quoting=csv.QUOTE_NONE` and tab separators, so every text value must be a single
line without tabs; HTML entities (`&amp;`, `&#39;`, ... common in Amazon titles) are unescaped here.
"""

import html
import re

_WHITESPACE = re.compile(r"\s+")
_PRICE = re.compile(r"^\$?\s*(\d[\d,]*(?:\.\d+)?)$")

CATEGORY_LEVEL_SEPARATOR = " > "
CATEGORY_PATH_SEPARATOR = " | "


def clean_text(value):
    """Unescape HTML entities and collapse all whitespace (tabs, newlines) into single spaces; None -> "".

    Unescaping repeats while it changes the text (at most 3 times): some Amazon fields are escaped twice
    (`Kirk&amp;#39;s` in Beauty's brands).
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # 2018/2023 descriptions are lists of paragraphs
        value = " ".join(str(part) for part in value)
    text = str(value)
    for _ in range(3):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return _WHITESPACE.sub(" ", text).strip()


def format_categories(categories):
    """Category paths as "A > B > C", several paths joined by " | ".

    Accepts a list of paths (2014 release, P5 metadata: `[["Beauty", "Makeup"], ...]`), a single path as a flat
    list of strings (2018 `category`, 2023 `categories`) or None.
    """
    if not categories:
        return ""
    if isinstance(categories, str):
        return clean_text(categories)
    paths = categories if all(isinstance(path, (list, tuple)) for path in categories) else [categories]
    formatted = (CATEGORY_LEVEL_SEPARATOR.join(filter(None, map(clean_text, path))) for path in paths)
    return CATEGORY_PATH_SEPARATOR.join(filter(None, formatted))


def parse_price(value):
    """A price as float, or None when absent or not a single amount (2018 prices are strings like "$12.99")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _PRICE.match(clean_text(value)) if isinstance(value, str) else None
    return float(match.group(1).replace(",", "")) if match else None


def item_fields(record):
    """Normalize one metadata record of any release to {title, brand, categories, description, price}.

    Key names differ by release: 2014 has `categories` (list of paths), 2018 `category` (one path), 2023
    `categories` (one path) and `store` instead of `brand`. Missing values become "" (price: None).
    """
    details = record.get("details")
    brand = record.get("brand") or (details.get("Brand") if isinstance(details, dict) else None) or record.get("store")
    return {
        "title": clean_text(record.get("title")),
        "brand": clean_text(brand),
        "categories": format_categories(record.get("categories") or record.get("category")),
        "description": clean_text(record.get("description")),
        "price": parse_price(record.get("price")),
    }
