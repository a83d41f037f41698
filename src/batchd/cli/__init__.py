"""The ``batchd`` command line.

- :mod:`batchd.cli.main`: the app, every command assembled (``batchd = "batchd.cli:main"``);
- :mod:`batchd.cli.common`: what the commands share (``--config``, :func:`~batchd.cli.common.fail`);
- :mod:`batchd.cli.serve`: ``serve``; :mod:`batchd.cli.run`: ``run``;
- :mod:`batchd.cli.client`: ``submit``, ``wait``, ``status``, ``cancel``, ``ls``, ``download``;
- :mod:`batchd.cli.prepare_join`: ``prepare`` and ``join``; :mod:`batchd.cli.keys`: ``keys``;
- :mod:`batchd.cli.progress`: the live bar or plain lines of ``run`` and ``wait``.
"""

from batchd.cli.main import app, main

__all__ = ["app", "main"]
