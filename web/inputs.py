"""What a request may carry, checked once at the edge for every route that uses these, so a
route never sees input that only fails deep down (in the DB driver, or encoding the response)
as a 500:

- ``RowId``, ``RowOffset``: a row id or a paged list's offset in a path or query string is
  at most 2^63-1 (a page number, at most that over the page size). A larger integer cannot even
  be bound as an SQLite parameter (``OverflowError``); it is a 422 naming the bound instead.
- ``StrictJsonRoute``: a JSON body whose strings are not valid Unicode (a lone UTF-16
  surrogate, ``"\\ud800"``, which JSON escapes allow) is a 422. Such a string can be neither
  stored (SQLite encodes text as UTF-8) nor echoed back in an error message (the JSON response
  is UTF-8 too), so every later step would fail with a 500.

Query strings, paths and form bodies need no such check: they are percent-decoded with
replacement characters, never into surrogates.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import Field

from orchestrator.core.db import MAX_ROW_ID

RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
"""A row id (run, job, schedule, token...) as a path or query parameter."""

RowOffset = Annotated[int, Field(ge=0, le=MAX_ROW_ID)]
"""How many rows a paged list skips (``offset``): bound like a row id, as SQLite binds it."""


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid_text_at(value: Any, where: str = "body") -> str | None:
    """Where in a decoded JSON value a string or key is not valid Unicode, or None.

    Iterative: a body nested as deep as the JSON parser allows must not overflow the stack
    here either. The location names only keys already known to be valid (it goes into the
    error message, which must itself be encodable)."""
    pending: list[tuple[Any, str]] = [(value, where)]
    while pending:
        item, at = pending.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return at
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _is_unicode(key):
                    return f"a key in {at}"
                pending.append((child, f"{at}.{key}"))
        elif isinstance(item, list):
            pending.extend((child, f"{at}[{index}]") for index, child in enumerate(item))
    return None


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        value = await super().json()
        where = invalid_text_at(value)
        if where is not None:
            raise HTTPException(422, f"{where}: not valid Unicode text (a lone UTF-16 "
                                     "surrogate escape such as \\ud800); send UTF-8 text")
        return value


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON body is refused (422) if any string in it is not valid Unicode.
    Use as ``APIRouter(route_class=StrictJsonRoute)``: every route of the router is covered,
    including ones added later."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict_handler
