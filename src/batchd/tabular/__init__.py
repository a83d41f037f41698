"""Client-side tables for ``batchd prepare`` and ``batchd join`` (no server code imports them).

- :mod:`batchd.tabular.formats`: CSV, TSV, JSONL and Parquet tables read and written row by row,
  :class:`~batchd.tabular.formats.TableError`;
- :mod:`batchd.tabular.templates`: request templates filled from a row, and the ``custom_id`` of
  each row, made the same way by both commands;
- :mod:`batchd.tabular.results`: a batch's output and error files read into one result per
  ``custom_id``.

Import the submodules: this package imports none of them, so that using one loads only it.
"""

__all__: list[str] = []
