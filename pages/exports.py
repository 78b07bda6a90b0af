"""Streaming CSV downloads: rows are read a few days at a time and sent as they are written,
never built in memory whole."""

import csv
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.utils import timezone

# Rows turned into text per trip to the database thread.
ROWS_PER_CHUNK = 500


class _Line:
    """A file-like object whose write() returns the text: csv.writer then yields lines."""

    def write(self, text: str) -> str:
        return text


def _text(rows: Iterator[Sequence[object]], writer: Any) -> str:
    return "".join(writer.writerow(row) for row in islice(rows, ROWS_PER_CHUNK))


async def _chunks(header: Sequence[str], rows: Iterable[Sequence[object]]) -> AsyncIterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(header)
    rows = iter(rows)
    # The rows' queries run in the request's database thread (thread-sensitive), a chunk at a
    # time; an async iterator is what the ASGI handler streams (a sync one it buffers whole).
    while text := await sync_to_async(_text)(rows, writer):
        yield text


def csv_response(
    name: str, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> StreamingHttpResponse:
    """A streamed CSV attachment named `name`-<UTC time>.csv."""
    response = StreamingHttpResponse(_chunks(header, rows), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    return response
