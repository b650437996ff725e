"""Page links for the long lists (Runs, Audit): which rows this page shows and links to the
pages before and after it that keep the filters the user set. Rendered by
``partials/pager.html``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode


def pager(path: str, filters: dict[str, str], page: int, matched: int,
          size: int, shown: int) -> dict[str, Any]:
    """``page`` is 1-based; ``shown`` is how many rows this page holds."""
    pages = max(1, -(-matched // size))
    first = (page - 1) * size + 1

    def href(n: int) -> str:
        return f"{path}?{urlencode(filters | {'page': n})}"

    return {"page": page, "pages": pages, "matched": matched,
            "first": first if shown else 0, "last": first + shown - 1 if shown else 0,
            "prev_href": href(page - 1) if page > 1 else None,
            "next_href": href(page + 1) if page < pages else None}
