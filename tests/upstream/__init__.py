"""A fake OpenAI upstream (and Anthropic Messages API) for tests: its own process, deterministic
answers, fault injection.

- :mod:`tests.upstream.answers`: what it answers (pure functions of the request body);
- :mod:`tests.upstream.faults`: :class:`~tests.upstream.faults.FaultConfig` and the
  deterministic fault decision (seed, body digest, attempt; markers; ``fail_first_n``);
- :mod:`tests.upstream.vision`: the checks of image parts and of ``/v1/responses`` bodies;
- :mod:`tests.upstream.messages`: Anthropic's ``/v1/messages`` (checks, errors, streamed events);
- :mod:`tests.upstream.server`: the aiohttp application;
- :mod:`tests.upstream.process`: :class:`~tests.upstream.process.UpstreamProcess`, the
  subprocess handle for tests;
- :mod:`tests.upstream.fixtures`: the ``upstream`` (session) and ``clean_upstream`` fixtures.

Run it by hand from the repository root::

    python -m tests.upstream --host 127.0.0.1 --port 0 --latency-ms 50 --p-500 0.2 --seed 7
    # → LISTENING http://127.0.0.1:<port>     (then SIGTERM or Ctrl-C to stop)

In a test::

    with UpstreamProcess(tmp_path, latency_ms=50) as up:
        client = OpenAI(base_url=up.api_url, api_key="x", max_retries=0)
        up.control(p_429=0.1, retry_after=0.2)   # POST /_control
        stats = up.stats()                       # GET /_stats
        up.reset()                               # POST /_reset
"""
