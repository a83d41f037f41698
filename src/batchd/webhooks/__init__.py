"""Webhooks (Standard Webhooks) for the terminal events of batches: ``settings`` (the
``[[webhooks]]`` entries), ``signing`` (secrets and signatures), ``guard`` (where a webhook may be
sent), ``deliver`` (the background deliverer of every process). Nothing is imported here, so that
:mod:`batchd.config` can import ``settings`` alone."""
