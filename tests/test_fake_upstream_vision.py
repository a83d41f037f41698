"""The fake upstream's image-part checks and its ``/v1/responses``, through the real SDK."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response

from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

HTTPS_IMAGE = "https://example.com/images/lighthouse.jpg?size=large"


def png_1x1() -> bytes:
    """A valid 1x1 RGB PNG, built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x80\x00")  # filter byte, then one RGB pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG_URL = "data:image/png;base64," + base64.b64encode(png_1x1()).decode()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def vision_body(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is in this?"}, *parts]}
        ],
        **extra,
    }


def image(url: str, detail: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url}
    if detail is not None:
        spec["detail"] = detail
    return {"type": "image_url", "image_url": spec}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("vision-upstream")) as proc:
        yield proc
        errors = proc.stats(digests=False)["internal_errors"]
        assert errors == 0, f"the fake upstream hit {errors} internal errors:\n{proc.output()}"


@pytest.fixture
def client(fake: UpstreamProcess) -> Iterator[OpenAI]:
    fake.wait_idle()
    fake.reset(config=True)
    with OpenAI(base_url=fake.api_url, api_key="x", max_retries=0, timeout=10) as sdk:
        yield sdk


# -- chat image parts ------------------------------------------------------------------------


def test_png_helper_builds_a_real_png() -> None:
    data = png_1x1()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1, 1)


def test_chat_image_parts_arrive_as_sent(client: OpenAI, fake: UpstreamProcess) -> None:
    body = vision_body(image(HTTPS_IMAGE, "low"), image(PNG_URL, "high"))
    raw = client.chat.completions.with_raw_response.create(**body)
    answer = raw.parse()

    expected = f"images: 2; {sha(HTTPS_IMAGE)}:low, {sha(PNG_URL)}:high"
    assert answers.image_parts(body) == [(sha(HTTPS_IMAGE), "low"), (sha(PNG_URL), "high")]
    assert answers.image_fingerprint(body) == expected
    content = answer.choices[0].message.content
    assert content is not None
    echo, fingerprint = content.split("\n")
    assert fingerprint == expected
    assert echo.startswith("Echo ")
    assert echo.endswith("What is in this?")
    assert content == answers.chat_content(body)
    assert answer.model_dump(exclude_unset=True) == answers.chat_completion(body)
    assert raw.headers["x-upstream-digest"] == answers.body_digest(body)
    assert fake.stats(digests=False)["by_outcome"] == {"ok": 1}


def test_detail_left_out_and_streamed_answer(client: OpenAI) -> None:
    body = vision_body(image(PNG_URL), image(HTTPS_IMAGE, "auto"))
    expected = f"images: 2; {sha(PNG_URL)}:-, {sha(HTTPS_IMAGE)}:auto"
    assert answers.image_parts(body) == [(sha(PNG_URL), None), (sha(HTTPS_IMAGE), "auto")]
    whole = client.chat.completions.create(**body).choices[0].message.content
    assert whole is not None
    assert whole.endswith("\n" + expected)
    with client.chat.completions.create(**body, stream=True) as stream:
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == whole


def test_json_mode_answer_carries_the_fingerprint(client: OpenAI) -> None:
    body = vision_body(image(PNG_URL, "low"), response_format={"type": "json_object"})
    content = client.chat.completions.create(**body).choices[0].message.content
    assert content is not None
    parsed = json.loads(content)
    assert parsed["images"] == f"images: 1; {sha(PNG_URL)}:low"
    assert set(parsed) == {"categories", "summary", "images"}


def test_answers_without_image_parts_are_unchanged() -> None:
    plain = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    parts = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    }
    assert answers.image_parts(plain) == []
    assert answers.image_fingerprint(parts) == ""
    assert "\n" not in answers.chat_content(plain)
    assert "images" not in json.loads(
        answers.chat_content({**plain, "response_format": {"type": "json_object"}})
    )


def _corrupt(part: dict[str, Any]) -> dict[str, Any]:
    return vision_body(image(HTTPS_IMAGE, "low"), part)


BAD_PARTS: list[tuple[str, dict[str, Any], str]] = [
    ("bad base64", image("data:image/png;base64,iVBORw0KGgo!!!"), "image_url.url"),
    (
        "not a png",
        image("data:image/png;base64," + base64.b64encode(b"\x89PNG" * 8).decode()),
        "image_url.url",
    ),
    (
        "not a jpeg",
        image("data:image/jpeg;base64," + base64.b64encode(b"GIF89a").decode()),
        "image_url.url",
    ),
    ("bmp", image("data:image/bmp;base64,Qk0="), "image_url.url"),
    ("no base64 marker", image("data:image/png," + PNG_URL.split(",", 1)[1]), "image_url.url"),
    ("ftp url", image("ftp://example.com/x.png"), "image_url.url"),
    ("no host", image("https:///x.png"), "image_url.url"),
    ("bad detail", image(HTTPS_IMAGE, "medium"), "image_url.detail"),
    ("no url", {"type": "image_url", "image_url": {"detail": "low"}}, "image_url.url"),
    ("image_url not an object", {"type": "image_url", "image_url": HTTPS_IMAGE}, "image_url"),
    ("text not a string", {"type": "text", "text": 3}, "text"),
    ("unknown part", {"type": "video_url", "video_url": {"url": HTTPS_IMAGE}}, "type"),
]


@pytest.mark.parametrize(
    ("part", "suffix"), [(p, s) for _, p, s in BAD_PARTS], ids=[n for n, _, _ in BAD_PARTS]
)
def test_bad_image_parts_are_400s_naming_the_param(
    client: OpenAI, fake: UpstreamProcess, part: dict[str, Any], suffix: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**_corrupt(part))
    assert info.value.param == f"messages[0].content[2].{suffix}"
    assert info.value.type == "invalid_request_error"
    [entry] = fake.requests_log()
    assert (entry["outcome"], entry["reason"]) == ("400", "validation")


def test_empty_content_array_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": []}]
        )
    assert info.value.param == "messages[0].content"


# -- /v1/responses ---------------------------------------------------------------------------


def test_responses_plain_text(client: OpenAI, fake: UpstreamProcess) -> None:
    body = {"model": "gpt-4o-mini", "input": "hi"}
    raw = client.responses.with_raw_response.create(**body)
    answer = raw.parse()
    assert answer.output_text
    assert answer.output_text == answers.response_text(body)
    assert answer.output_text.startswith("Echo ")
    assert answer.output_text.endswith(": hi")
    assert answer.model_dump(exclude_unset=True) == answers.response(body)
    assert answer.id.startswith("resp_")
    assert answer.status == "completed"
    assert answer.model == "gpt-4o-mini"
    assert answer.usage is not None
    assert answer.usage.input_tokens == 1
    assert answer.usage.output_tokens == len(answer.output_text.split())
    assert raw.headers["x-upstream-digest"] == answers.body_digest(body)
    assert fake.stats(digests=False)["by_path"] == {"/v1/responses": 1}
    # The SDK's own model accepts the answer as it is.
    assert Response.model_validate(answers.response(body)).output_text == answer.output_text


def test_responses_answer_is_deterministic_and_depends_on_the_input(client: OpenAI) -> None:
    first = client.responses.create(model="gpt-4o-mini", input="a story", instructions="Be brief.")
    again = client.responses.create(model="gpt-4o-mini", input="a story", instructions="Be brief.")
    other = client.responses.create(model="gpt-4o-mini", input="a story")
    assert first.model_dump() == again.model_dump()
    assert first.output_text != other.output_text
    assert first.instructions == "Be brief."
    assert first.usage is not None
    assert first.usage.input_tokens == 4  # instructions count, as a system message


def test_responses_json_object(client: OpenAI) -> None:
    answer = client.responses.create(
        model="gpt-4o-mini",
        input="A cavalry scout crosses the desert with news that the war is over.",
        text={"format": {"type": "json_object"}},
    )
    parsed = json.loads(answer.output_text)
    assert set(parsed) == {"categories", "summary"}
    assert set(parsed["categories"]) <= set(answers.GENRES)
    assert answer.text is not None
    assert answer.text.format is not None
    assert answer.text.format.type == "json_object"


def test_responses_json_schema(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
            "mood": {"type": "string", "enum": ["dark", "light"]},
        },
        "required": ["title", "year", "mood"],
        "additionalProperties": False,
    }
    answer = client.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": "A film about clocks."}],
        text={"format": {"type": "json_schema", "name": "film", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(answer.output_text), schema)


def test_responses_input_image_is_fingerprinted(client: OpenAI) -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Describe both."},
                    {"type": "input_image", "image_url": PNG_URL, "detail": "high"},
                    {"type": "input_image", "image_url": HTTPS_IMAGE},
                ],
            }
        ],
    }
    answer = client.responses.create(**body)
    expected = f"images: 2; {sha(PNG_URL)}:high, {sha(HTTPS_IMAGE)}:-"
    assert answers.image_fingerprint(body) == expected
    assert answer.output_text.split("\n")[-1] == expected
    assert answer.output_text == answers.response_text(body)
    assert Response.model_validate(answers.response(body)).output_text == answer.output_text
    # The same images sent as chat image parts give the same fingerprint.
    chat = answers.responses_chat_body(body)
    assert answers.image_fingerprint(chat) == expected


RESPONSES_400S: list[tuple[str, dict[str, Any], str]] = [
    ("missing input", {}, "input"),
    ("empty input", {"input": ""}, "input"),
    ("input not text", {"input": 3}, "input"),
    ("bad role", {"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ("bad item", {"input": [{"type": "function_call", "role": "user"}]}, "input[0].type"),
    (
        "bad image",
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "data:image/png;base64,@@"}],
                }
            ]
        },
        "input[0].content[0].image_url",
    ),
    (
        "bad detail",
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": HTTPS_IMAGE, "detail": "x"}],
                }
            ]
        },
        "input[0].content[0].detail",
    ),
    ("bad format", {"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
    (
        "schema missing",
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
        "text.format.schema",
    ),
    ("few tokens", {"input": "hi", "max_output_tokens": 3}, "max_output_tokens"),
    ("stream", {"input": "hi", "stream": True}, "stream"),
]


@pytest.mark.parametrize(
    ("extra", "param"),
    [(e, p) for _, e, p in RESPONSES_400S],
    ids=[n for n, _, _ in RESPONSES_400S],
)
def test_responses_bad_requests(client: OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/responses", body={"model": "gpt-4o-mini", **extra}, cast_to=object)
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"


def test_responses_stream_refused_through_the_sdk(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    assert info.value.param == "stream"
    assert "not supported" in info.value.message


def test_responses_go_through_fault_injection(client: OpenAI, fake: UpstreamProcess) -> None:
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="gpt-4o-mini", input="please FAULT:500 now")
    fake.control(fail_first_n=1)
    body = {"model": "gpt-4o-mini", "input": "second time lucky"}
    with pytest.raises(openai.InternalServerError):
        client.responses.create(**body)
    assert client.responses.create(**body).output_text == answers.response_text(body)
    digest = answers.body_digest(body)
    assert fake.attempts(digest) == 2
    stats = fake.stats(digests=False)
    assert stats["by_path"] == {"/v1/responses": 3}
    assert stats["by_outcome"] == {"500": 2, "ok": 1}


def test_responses_malformed_fault(client: OpenAI) -> None:
    with pytest.raises(json.JSONDecodeError):
        client.responses.create(model="gpt-4o-mini", input="FAULT:malformed here")
