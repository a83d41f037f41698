"""The engine: everything that happens to a batch after it is created.

:class:`BatchManager` validates new batches in the background, reacts to cancels, resumes what a
previous process left unfinished and purges the blobs of deleted and expired files; its
:class:`~batchd.engine.scheduler.Scheduler` claims validated batches and runs each with a
:class:`~batchd.engine.runner.BatchRunner` against the providers.
"""

from batchd.engine.manager import BatchManager

__all__ = ["BatchManager"]
