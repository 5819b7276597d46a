"""A case's tumour type: the scan-level label of UMS-Rep's second task (docs/umsrep.md, "A second task").

A simulated federation's manifest gives it per case (``"type": "metastasis"``); a hospital lists it in
``types.csv`` in its data folder, one row per case, with a header::

    case,type
    BraTS2021_00000,glioma
    BraTS2021_00001,metastasis

A type is lower-case words of letters and digits joined by hyphens (the simulated federations use
``uharmony.vocabulary.TUMOUR_TYPES``). A row naming a case the folder does not have is skipped and counted
(``Site.unmatched_types``: a count kept at the site and logged, never sent: a registry export may list
thousands of cases, and their ids may identify patients); a case the table does not list has no type (it takes
part in every other task). The table is read only if it is at most ``MAX_TABLE_BYTES``; a malformed row is an
error naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from uharmony.data.errors import DataError
from uharmony.files import read_small

if TYPE_CHECKING:
    from uharmony.data.cases import Site

TYPES_TABLE = "types.csv"
TYPE_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
MAX_TYPE_LENGTH = 64
MAX_TABLE_BYTES = 1 << 20  # 1 MiB: tens of thousands of rows
log = logging.getLogger(__name__)


def check_type(value, where, key: str = "type") -> str:
    """``value`` as a tumour-type name, or a :class:`DataError` naming ``where`` and ``key``."""
    if not (isinstance(value, str) and len(value) <= MAX_TYPE_LENGTH and TYPE_NAME.fullmatch(value)):
        raise DataError(
            where,
            f"{key}: a tumour type is lower-case letters and digits, words joined by hyphens, at most "
            f"{MAX_TYPE_LENGTH} characters (e.g. 'glioma', 'metastasis'), got {str(value)[:80]!r}",
        )
    return value


def read_types_table(path: str | Path) -> dict[str, str]:
    """case id -> tumour type, from a ``case,type`` CSV table (its size checked before it is read)."""
    path = Path(path)
    try:
        raw = read_small(path, MAX_TABLE_BYTES)  # size and type checked before a byte is read
    except ValueError as exc:
        raise DataError(path, f"read only from a plain file of at most {MAX_TABLE_BYTES} bytes ({exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    rows = csv.reader(io.StringIO(text, newline=""))
    types: dict[str, str] = {}
    try:
        header = [h.strip() for h in next(rows, [])]
        if header != ["case", "type"]:
            raise DataError(path, f"line 1: the header must be 'case,type', got {','.join(header)[:80]!r}")
        for row in rows:
            line = rows.line_num  # the physical line the row ends on (a quoted field may hold line breaks)
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2 or not row[0].strip():
                raise DataError(path, f"line {line}: expected 'case,type', got {','.join(row)[:80]!r}")
            case = row[0].strip()
            if case in types:
                raise DataError(path, f"line {line}: case {case[:80]!r} is listed twice")
            types[case] = check_type(row[1].strip(), path, f"line {line}")
    except csv.Error as exc:  # a field over csv's limit, a stray line break inside a field
        raise DataError(path, f"line {rows.line_num}: not a CSV table ({exc})") from exc
    return types


def attach_types(site: Site, folder: str | Path) -> Site:
    """Give ``site``'s cases their types from ``folder/types.csv`` (if it is there); rows for cases the site
    does not have (or whose folder was skipped) are counted in ``site.unmatched_types`` and logged as a count."""
    table = Path(folder) / TYPES_TABLE
    try:
        types = read_types_table(table)
    except FileNotFoundError:
        return site
    for case in site.cases:
        case.tumour_type = types.pop(case.case_id, None)
    site.unmatched_types = len(types)
    if types:
        log.info("site %s: %d rows of %s name no usable case folder (ignored)", site.name, len(types), table.name)
    return site
