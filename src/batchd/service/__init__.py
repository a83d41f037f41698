"""The service layer: what every API dialect (OpenAI ``/v1``, and later Azure and Anthropic) and
the command line do with files and batches, with the project's limits admitted atomically in the
store. Dialects parse their wire format, call a service and render its answer; the engine is told
of new and cancelled batches through :class:`EngineHooks` and never imports this package."""

from batchd.service.batches import BatchService, EngineHooks, NewBatch
from batchd.service.files import FileService, UploadCap
from batchd.service.pages import Page

__all__ = ["BatchService", "EngineHooks", "FileService", "NewBatch", "Page", "UploadCap"]
