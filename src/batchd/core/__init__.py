"""The core of batchd, shared by the service layer and the engine: the batch lifecycle
(:mod:`~batchd.core.lifecycle`), files made from blobs (:mod:`~batchd.core.files`) and the request
index of a validated input file (:mod:`~batchd.core.request_index`)."""
