"""``batchd prepare`` and ``batchd join``: from a table to a batch file, and from the results of
the batch back to the table::

    batchd prepare movies.csv --id-column Series_Title --template request.json -o batch.jsonl
    batchd join output.jsonl --errors errors.jsonl --table movies.csv --id-column Series_Title \\
        --json-fields categories,summary -o joined.csv

Both commands read the table one row at a time and compute the ``custom_id`` of each row the
same way (:class:`~batchd.tabular.templates.RowIds`), so the id options given to ``prepare`` pair
every result with its row in ``join``. ``prepare`` keeps the ids it wrote in memory to refuse
duplicates; ``join`` keeps the results (:mod:`batchd.tabular.results`) in memory, keyed by
``custom_id``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from batchd.atomicfile import AtomicFile
from batchd.cli.common import fail
from batchd.tabular.formats import (
    Table,
    TableError,
    cell_text,
    open_table,
    open_writer,
    table_format,
)
from batchd.tabular.results import ResultColumns, Results, read_results, result_columns
from batchd.tabular.templates import RequestTemplate, RowIds, check_columns

__all__ = ["join", "prepare"]

MAX_REQUESTS = 50_000  # OpenAI's limits on one batch (and batchd's defaults): requests,
MAX_BYTES = 200 * 1024 * 1024  # and bytes of its input file

IdColumnOption = Annotated[
    str | None,
    typer.Option(
        help="The column whose cells are the custom_ids, e.g. --id-column Series_Title; they "
        "must be unique and non-empty. Default: the row number (row-1, row-2, ...).",
        show_default=False,
    ),
]
IdTemplateOption = Annotated[
    str | None,
    typer.Option(
        help="A custom_id made of several columns, e.g. "
        "--id-template '{Series_Title} ({Released_Year})'.",
        show_default=False,
    ),
]
IdPrefixOption = Annotated[
    str | None,
    typer.Option(
        help="Text before every custom_id, e.g. --id-prefix movie- (movie-1, movie-2, ...). "
        "Default: row- before row numbers, nothing before cells.",
        show_default=False,
    ),
]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="The table's format when its extension (.csv, .tsv, .jsonl, .ndjson, .parquet) "
        "does not tell: csv, tsv, jsonl or parquet, e.g. --format jsonl.",
        show_default=False,
    ),
]
DelimiterOption = Annotated[
    str | None,
    typer.Option(
        help="The field separator of a CSV table, e.g. --delimiter ';'. Default ',' (a tab for "
        ".tsv).",
        show_default=False,
    ),
]
EncodingOption = Annotated[
    str,
    typer.Option(
        help="The text encoding of a CSV table, e.g. --encoding latin-1. Default utf-8 (a byte "
        "order mark is skipped).",
        show_default=False,
    ),
]
_BRACES_HINT = " (write {{ and }} for literal braces in the template)"


def _warn(message: str) -> None:
    typer.echo(f"batchd: warning: {message}", err=True)


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 1024 * 1024 else f"{n / (1024 * 1024):,.1f} MiB"


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Errors a user can cause, as ``batchd: message`` on stderr and exit status 2."""
    try:
        yield
    except TableError as exc:
        fail(exc.message)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")


# --------------------------------------------------------------------------- prepare


def prepare(
    table: Annotated[
        Path,
        typer.Argument(
            help="The table: CSV, TSV, JSONL or Parquet, e.g. movies.csv.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The batch file to write, e.g. -o batch.jsonl (replaced whole, never left "
            "half-written).",
            dir_okay=False,
            show_default=False,
        ),
    ],
    template: Annotated[
        Path | None,
        typer.Option(
            "--template",
            "-t",
            help="A JSON file: a request body with {column} placeholders in its strings, e.g. "
            '--template request.json holding {"messages": [{"role": "user", "content": '
            '"Summarise: {Overview}"}]}, or a whole batch line '
            '{"custom_id": "movie-{Series_Title}", "url": ..., "body": {...}}.',
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    template_string: Annotated[
        str | None,
        typer.Option(
            help="The template given inline instead of --template, e.g. --template-string "
            '\'{"input": "{Overview}"}\'.',
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="The endpoint of every request, e.g. --url /v1/embeddings. Default "
            "/v1/chat/completions (or the url of a batch-line template).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Sets body.model of every request, e.g. --model gpt-4o-mini (needed when the "
            "template has no model).",
            show_default=False,
        ),
    ] = None,
    id_column: IdColumnOption = None,
    id_template: IdTemplateOption = None,
    id_prefix: IdPrefixOption = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Read only the first N rows of the table, e.g. --limit 50.",
            min=1,
            show_default=False,
        ),
    ] = None,
    skip_empty: Annotated[
        list[str] | None,
        typer.Option(
            help="Leave out rows whose cell in this column is empty, e.g. --skip-empty Overview "
            "(repeat it for several columns).",
            metavar="COLUMN",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        int | None,
        typer.Option(
            help="Write several files of at most N requests each, e.g. --split 50000 with "
            "-o batch.jsonl writes batch-001.jsonl, batch-002.jsonl, ...",
            min=1,
            show_default=False,
        ),
    ] = None,
    fmt: FormatOption = None,
    delimiter: DelimiterOption = None,
    encoding: EncodingOption = "utf-8",
) -> None:
    """Build a batch file from a table and a request template, one request per row.

    \b
    e.g. batchd prepare movies.csv --id-column Series_Title --template request.json \\
             --model gpt-4o-mini --limit 50 -o batch.jsonl
    with request.json:
        {"messages": [{"role": "system", "content": "Answer in JSON: {{\\"summary\\": ...}}"},
                      {"role": "user", "content": "{Series_Title}: {Overview}"}]}

    Placeholders {column} in the template's strings are replaced by the row's cells, as text
    and JSON-escaped, so every line is valid JSON; {{ and }} are literal braces. A placeholder
    that names no column is an error before anything is written. Each line gets a custom_id
    from --id-column, --id-template or the row number; give batchd join the same options.
    """
    with _user_errors():
        request = RequestTemplate(
            _load_template(template, template_string),
            url=url,
            model=model,
            id_column=id_column,
            id_template=id_template,
            id_prefix=id_prefix,
        )
        for warning in request.warnings:
            _warn(warning)
        fmt = table_format(table, fmt)
        with open_table(table, fmt, delimiter=delimiter, encoding=encoding) as source:
            _check_prepare_columns(source, request, skip_empty or [])
            files = _BatchFiles(output, split)
            try:
                rows, skipped = _write_requests(source, request, files, limit, skip_empty or [])
                files.commit()
            except BaseException:
                files.discard()
                raise
    _report_prepared(table, rows, skipped, files)


def _load_template(path: Path | None, text: str | None) -> Any:
    if (path is None) == (text is None):
        raise TableError("give the request template with --template FILE or --template-string")
    where = "--template-string" if path is None else str(path)
    data = path.read_bytes() if path is not None else (text or "").encode()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TableError(f"the template ({where}) is not valid JSON: {exc}") from None


def _check_prepare_columns(table: Table, request: RequestTemplate, skip_empty: list[str]) -> None:
    if not table.columns:
        raise TableError(f"{table.path} has no rows")
    check_columns(request.columns, table, "the template", _BRACES_HINT)
    check_columns(request.ids.columns, table, "the custom_id")
    check_columns(skip_empty, table, "--skip-empty")


def _write_requests(
    table: Table,
    request: RequestTemplate,
    files: _BatchFiles,
    limit: int | None,
    skip_empty: list[str],
) -> tuple[int, int]:
    """Write the line of every row; the rows read and the rows skipped."""
    first_row: dict[str, int] = {}  # custom_id -> the row that has it
    rows = skipped = 0
    for number, row in enumerate(itertools.islice(table.rows, limit), 1):
        rows = number
        if any(not cell_text(row.get(column)).strip() for column in skip_empty):
            skipped += 1
            continue
        custom_id = request.ids.custom_id(row, number)
        if custom_id is None:
            raise TableError(
                f"row {number} of {table.path} has an empty custom_id "
                f"({', '.join(request.ids.columns)}): leave such rows out with --skip-empty"
            )
        first = first_row.setdefault(custom_id, number)
        if first != number:
            raise TableError(
                f"row {number} of {table.path} has the custom_id {custom_id!r} of row {first}: "
                "custom_ids must be unique. Use a unique column, several columns with "
                "--id-template '{COLUMN} ({OTHER_COLUMN})', or the row numbers (no --id-column)"
            )
        files.write(request.line(row, custom_id))
    if rows == skipped:
        raise TableError(
            f"no request to write: {table.path} has no rows"
            + (f" with {', '.join(skip_empty)} filled in" if rows else "")
        )
    return rows, skipped


class _BatchFiles:
    """The batch file, or with ``split`` its parts ``NAME-001.jsonl``, ... of at most ``split``
    lines, each written atomically and all moved into place together by :meth:`commit`."""

    def __init__(self, output: Path, split: int | None) -> None:
        self.output = output
        self.split = split
        self.parts: list[tuple[AtomicFile, list[int]]] = []  # file, [lines, bytes]

    def path(self, index: int) -> Path:
        """The path of part ``index`` (1-based)."""
        if self.split is None:
            return self.output
        suffix = self.output.suffix or ".jsonl"
        return self.output.with_name(f"{self.output.stem}-{index:03d}{suffix}")

    def write(self, line: bytes) -> None:
        if not self.parts or (self.split is not None and self.parts[-1][1][0] >= self.split):
            if self.parts:
                self.parts[-1][0].close()
            self.parts.append((AtomicFile(self.path(len(self.parts) + 1)), [0, 0]))
        part, counts = self.parts[-1]
        part.file.write(line)
        counts[0] += 1
        counts[1] += len(line)

    def commit(self) -> None:
        for part, _ in self.parts:
            part.commit()

    def discard(self) -> None:
        for part, _ in self.parts:
            part.discard()

    def summary(self) -> Iterator[tuple[Path, int, int]]:
        """Each file written, its lines and its bytes."""
        for part, (lines, size) in self.parts:
            yield part.path, lines, size


def _report_prepared(table: Path, rows: int, skipped: int, files: _BatchFiles) -> None:
    written = list(files.summary())
    lines = sum(n for _, n, _ in written)
    size = sum(b for _, _, b in written)
    skip = f", skipped {skipped} with empty cells" if skipped else ""
    where = (
        str(written[0][0])
        if len(written) == 1 and files.split is None
        else f"{len(written)} files ({', '.join(str(path) for path, _, _ in written)})"
    )
    typer.echo(
        f"batchd: read {rows} rows of {table}{skip}; wrote {lines} requests ({_size(size)}) "
        f"to {where}",
        err=True,
    )
    for path, n, size in written:
        if n > MAX_REQUESTS or size > MAX_BYTES:
            _warn(
                f"{path} has {n} requests ({_size(size)}); OpenAI takes at most {MAX_REQUESTS} "
                f"requests and 200 MB per batch (batchd: max_requests_per_batch, "
                f"max_batch_file_bytes): --split N writes files of N requests"
            )
    stale = files.path(len(written) + 1)
    if files.split is not None and stale.exists():
        _warn(f"{stale} is left from an earlier run: it is not part of this batch")


# --------------------------------------------------------------------------- join


def join(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="The output file of the batch, and its error file too if you like, e.g. "
            "output.jsonl errors.jsonl; with those of its retries (batchd retry) too, in any "
            "order: a request's success wins over its failures.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    table: Annotated[
        Path,
        typer.Option(
            help="The table the batch was prepared from, e.g. --table movies.csv.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The joined table to write, its format from the extension: .csv, .tsv, "
            ".jsonl or .parquet, e.g. -o joined.csv.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    errors: Annotated[
        list[Path] | None,
        typer.Option(
            help="The error file of the batch, e.g. --errors errors.jsonl (the same as giving it "
            "after the output file).",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    id_column: IdColumnOption = None,
    id_template: IdTemplateOption = None,
    id_prefix: IdPrefixOption = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Join only the first N rows of the table, e.g. --limit 50 (as given to "
            "batchd prepare). Default: all of them.",
            min=1,
            show_default=False,
        ),
    ] = None,
    json_fields: Annotated[
        str | None,
        typer.Option(
            help="Parse each answer as a JSON object and add these fields as columns, e.g. "
            "--json-fields categories,summary, or --json-fields '*' for every field seen. Adds "
            "a parse_error column for answers that are not a JSON object. A field named like "
            "another column (e.g. content or status) becomes json_FIELD (json_content).",
            show_default=False,
        ),
    ] = None,
    content_column: Annotated[
        str,
        typer.Option(
            help="The name of the answer's column, e.g. --content-column response. Default "
            "content.",
            show_default=False,
        ),
    ] = "content",
    prefix: Annotated[
        str,
        typer.Option(
            help="Text before the name of every added column, the JSON fields' too, e.g. "
            "--prefix result_ when the table already has a status or content column.",
            show_default=False,
        ),
    ] = "",
    usage: Annotated[
        bool,
        typer.Option(
            "--usage",
            help="Add the token counts prompt_tokens, completion_tokens and total_tokens, e.g. "
            "--usage.",
        ),
    ] = False,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings/--no-embeddings",
            help="Add the vectors of an embeddings batch as an embedding column (JSON text), "
            "e.g. --no-embeddings to leave them out. Default: added.",
            show_default=False,
        ),
    ] = True,
    fmt: FormatOption = None,
    delimiter: DelimiterOption = None,
    encoding: EncodingOption = "utf-8",
) -> None:
    """Join the results of a batch back to its table by custom_id.

    \b
    e.g. batchd join output.jsonl --errors errors.jsonl --table movies.csv \\
             --id-column Series_Title --json-fields categories,summary -o joined.csv

    Every row of the table is written with the columns content (the answer: the message of a
    chat completion, the text of a completion), finish_reason, status (ok, the HTTP status of
    a failed request, or an error code such as batch_expired) and error (its message); rows
    without a result keep them empty. Give the id options that batchd prepare was given, so
    each row finds its result. Results whose custom_id is in no row are counted on stderr.
    With --json-fields, each field is a column of its own name; one named like a column of the
    table or another added column (an answer {"content": ..., "status": ...}) is written as
    json_content, json_status, ... and said so on stderr.
    """
    with _user_errors():
        loaded = read_results([*results, *(errors or [])], embeddings=embeddings)
        ids = RowIds(column=id_column, template=id_template, prefix=id_prefix)
        fmt = table_format(table, fmt)
        with open_table(table, fmt, delimiter=delimiter, encoding=encoding) as source:
            check_columns(ids.columns, source, "the custom_id")
            columns = result_columns(
                source.columns,
                loaded,
                json_fields=json_fields,
                content_column=content_column,
                prefix=prefix,
                usage=usage,
            )
            if columns.renamed:
                renamed = ", ".join(f"{key!r} as {column!r}" for key, column in columns.renamed)
                _warn(
                    f"JSON fields named like a column of the table or one that batchd adds are "
                    f"written under another name: {renamed}"
                )
            matched, rows = _write_joined(source, loaded, ids, columns, output, limit)
    _report_joined(loaded, matched, rows, output)


def _table_types(table: Table) -> dict[str, Any]:
    """The Parquet types of the table's own columns (none for JSONL: inferred from the data)."""
    if table.arrow_schema is not None:
        return {field.name: field.type for field in table.arrow_schema}
    return {} if table.format == "jsonl" else dict.fromkeys(table.columns, "string")


def _write_joined(
    table: Table,
    results: Results,
    ids: RowIds,
    columns: ResultColumns,
    output: Path,
    limit: int | None,
) -> tuple[dict[str, int], int]:
    """Write every row with its result's cells; the row of each matched custom_id, the rows."""
    writer = open_writer(output, table.columns + columns.names, _table_types(table) | columns.types)
    matched: dict[str, int] = {}
    rows = 0
    try:
        for number, row in enumerate(itertools.islice(table.rows, limit), 1):
            rows = number
            custom_id = ids.custom_id(row, number)
            result = None if custom_id is None else results.by_id.get(custom_id)
            if custom_id is not None and result is not None:
                first = matched.setdefault(custom_id, number)
                if first != number:
                    raise TableError(
                        f"rows {first} and {number} of {table.path} have the same custom_id "
                        f"{custom_id!r}, so its result belongs to neither: are the id options "
                        "those given to batchd prepare (and --limit)?"
                    )
            writer.write(row | columns.cells(result))
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    return matched, rows


def _report_joined(results: Results, matched: dict[str, int], rows: int, output: Path) -> None:
    ok = sum(1 for custom_id in matched if results.by_id[custom_id].ok)
    typer.echo(
        f"batchd: wrote {rows} rows to {output}: {ok} ok, {len(matched) - ok} failed, "
        f"{rows - len(matched)} without a result",
        err=True,
    )
    if results.duplicates:
        _warn(
            f"{results.duplicates} result lines repeat an earlier custom_id (a success won over "
            "a failure, as after batchd retry; otherwise the last line won)"
        )
    unmatched = [custom_id for custom_id in results.by_id if custom_id not in matched]
    if unmatched:
        examples = ", ".join(repr(custom_id) for custom_id in unmatched[:3])
        hint = (
            ": are the id options (--id-column, --id-template, --id-prefix) those given to "
            "batchd prepare?"
            if not matched
            else ""
        )
        _warn(
            f"{len(unmatched)} of {len(results.by_id)} results have a custom_id that no row "
            f"has (e.g. {examples}){hint}"
        )
