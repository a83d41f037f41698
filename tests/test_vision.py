"""Vision through an ``openai`` route, end to end: the image captioning cookbook's requests
(``image_url`` parts, an https URL and a ``data:`` URL, ``detail``) reach the fake upstream byte
for byte, in a batch and synchronously, and ``/v1/responses`` is relayed synchronously.

The fake upstream checks every image part as OpenAI does and answers with a fingerprint of what
it received (:func:`tests.upstream.answers.image_fingerprint`: the SHA-256 of each URL as sent,
and its ``detail``), so comparing its answer with the one computed here from the body sent
proves that nothing was re-encoded on the way.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from tests.engine_support import model_route, serving, to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

ROUTE = "qwen2.5-vl-7b"
UPSTREAM_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
CAPTION_PROMPT = (
    "Your goal is to generate short, descriptive captions for images of items. You will be "
    "provided with an item image and the name of that item and you will output a caption that "
    "captures the most important information about the item."
)


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG image (grey pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


DATA_URL = "data:image/png;base64," + base64.b64encode(png()).decode()


def caption_body(title: str, url: str, detail: str) -> dict[str, Any]:
    """The captioning cookbook's request: a system prompt, the title and the image."""
    return {
        "model": "gpt-4o",
        "temperature": 0.2,
        "max_tokens": 300,
        "messages": [
            {"role": "system", "content": CAPTION_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": title},
                    {"type": "image_url", "image_url": {"url": url, "detail": detail}},
                ],
            },
        ],
    }


def upstream_view(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the upstream must receive it: only the model renamed."""
    return {**body, "model": UPSTREAM_MODEL}


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BatchdServer, OpenAI]]:
    """A batchd server with one vision route (alias ``gpt-4o``) on a fake upstream; a client."""
    root = tmp_path_factory.mktemp("vision")
    with UpstreamProcess(root, latency_ms=2) as upstream:
        route = model_route(upstream, name=ROUTE, aliases=["gpt-4o"], upstream_model=UPSTREAM_MODEL)
        with serving(root / "batchd", upstream, route) as served:
            yield served


@pytest.fixture
def server(vision: tuple[BatchdServer, OpenAI]) -> BatchdServer:
    return vision[0]


@pytest.fixture
def client(vision: tuple[BatchdServer, OpenAI]) -> OpenAI:
    return vision[1]


def test_the_captioning_batch_reaches_the_upstream_untouched(
    server: BatchdServer, client: OpenAI
) -> None:
    bodies = {
        "lamp": caption_body("Desk lamp", "https://example.com/items/lamp.jpg", "low"),
        "chair": caption_body("Chair", DATA_URL, "high"),
        "sofa": caption_body("Sofa", "https://example.com/items/sofa%20big.png?v=2", "auto"),
    }
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
        for cid, body in bodies.items()
    ]
    uploaded = client.files.create(file=("captions.jsonl", to_jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for_batch(client, server, batch.id)
    output = [
        json.loads(x) for x in client.files.content(done["output_file_id"]).text.split("\n") if x
    ]
    assert [x["custom_id"] for x in output] == list(bodies)
    for line in output:
        sent = upstream_view(bodies[line["custom_id"]])
        body = line["response"]["body"]
        assert body == answers.chat_completion(sent)
        content = body["choices"][0]["message"]["content"]
        assert content.endswith(answers.image_fingerprint(sent))
        assert answers.image_fingerprint(sent).startswith("images: 1; ")


def test_a_corrupt_data_url_is_the_upstreams_400_line(server: BatchdServer, client: OpenAI) -> None:
    broken = caption_body("Broken", "data:image/png;base64,bm90IGEgcG5n", "high")
    line = {"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions", "body": broken}
    uploaded = client.files.create(file=("broken.jsonl", to_jsonl([line])), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for_batch(client, server, batch.id)
    (error,) = [
        json.loads(x) for x in client.files.content(done["error_file_id"]).text.split("\n") if x
    ]
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "messages[1].content[1].image_url.url"


def test_image_parts_synchronously(client: OpenAI) -> None:
    body = caption_body("Chair", DATA_URL, "high")
    answer = client.chat.completions.create(
        model=body["model"], messages=body["messages"], temperature=0.2, max_tokens=300
    )
    assert answer.model == UPSTREAM_MODEL  # who answered
    assert answer.choices[0].message.content == answers.chat_content(upstream_view(body))


def test_responses_are_relayed_synchronously(server: BatchdServer, client: OpenAI) -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "instructions": "Caption the image.",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "A chair"},
                    {"type": "input_image", "image_url": DATA_URL, "detail": "low"},
                ],
            }
        ],
        "max_output_tokens": 64,
    }
    answer = client.responses.create(**body)
    assert answer.output_text == answers.response_text(upstream_view(body))
    assert answers.image_fingerprint(upstream_view(body)) in answer.output_text
    # Azure's GA route relays it too.
    with OpenAI(base_url=f"{server.base_url}/openai/v1/", api_key="-", max_retries=0) as azure:
        assert azure.responses.create(**body).output_text == answer.output_text
