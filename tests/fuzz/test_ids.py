"""hypothesis on the ids of objects that exist, mutated (files uploaded and a batch created
first), and on API key headers against an app with the keys of two projects."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.support import (
    CHAT,
    CHAT_LINES,
    KEYS,
    LATIN1,
    UPLOAD,
    UPLOAD_TYPE,
    Api,
    checked,
    fuzz,
    mutated_ids,
    path_to,
    routable,
)


def test_file_ids(quiet_api: Api, known: dict[str, Any]) -> None:
    files: dict[str, tuple[dict[str, Any], bytes]] = known["files"]

    @fuzz()
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        file_id = data.draw(mutated_ids(data.draw(st.sampled_from(sorted(files)))))
        retrieved = quiet_api.request("GET", path_to("/v1/files", file_id))
        body = checked(retrieved, "OpenAIFile")
        content = quiet_api.request("GET", path_to("/v1/files", file_id, "/content"))
        checked(content)
        if file_id in files:
            assert retrieved.status_code == 200
            assert body == files[file_id][0]
            assert content.status_code == 200
            assert content.content == files[file_id][1]
        elif routable(file_id):
            assert (retrieved.status_code, content.status_code) == (404, 404)
            assert body["error"]["param"] == "id"

    run()


def test_delete_file_ids(quiet_api: Api) -> None:
    victim = quiet_api.upload(b"to be deleted\n", "user_data")["id"]
    deleted: set[str] = set()

    @fuzz()
    @given(file_id=mutated_ids(victim))
    def run(file_id: str) -> None:
        response = quiet_api.request("DELETE", path_to("/v1/files", file_id))
        body = checked(response, "DeleteFileResponse")
        if file_id == victim and file_id not in deleted:
            assert response.status_code == 200
            assert body == {"id": victim, "object": "file", "deleted": True}
            deleted.add(file_id)
        elif routable(file_id):
            assert response.status_code == 404

    run()
    assert deleted == {victim}
    assert quiet_api.request("GET", f"/v1/files/{victim}").status_code == 404


def test_list_cursors(quiet_api: Api, known: dict[str, Any]) -> None:
    files: dict[str, Any] = known["files"]
    batch_id: str = known["batch"]["id"]

    @fuzz()
    @given(data=st.data(), limit=st.integers(1, 5), order=st.sampled_from(["asc", "desc"]))
    def run(data: st.DataObject, limit: int, order: str) -> None:
        after = data.draw(mutated_ids(data.draw(st.sampled_from(sorted(files)))))
        page = quiet_api.request(
            "GET", "/v1/files", params={"after": after, "limit": limit, "order": order}
        )
        body = checked(page, "ListFilesResponse")
        if after in files:
            assert page.status_code == 200
            assert len(body["data"]) <= limit
            assert after not in [f["id"] for f in body["data"]]
        else:
            assert page.status_code == 400
            assert body["error"]["param"] == "after"
        after = data.draw(mutated_ids(batch_id))
        page = quiet_api.request("GET", "/v1/batches", params={"after": after, "limit": limit})
        checked(page, "ListBatchesResponse")
        assert page.status_code == (200 if after == batch_id else 400)

    run()


def test_batch_ids(quiet_api: Api, known: dict[str, Any]) -> None:
    batch_id: str = known["batch"]["id"]

    @fuzz()
    @given(candidate=mutated_ids(batch_id), cancel=st.booleans())
    def run(candidate: str, cancel: bool) -> None:
        retrieved = quiet_api.request("GET", path_to("/v1/batches", candidate))
        body = checked(retrieved, "Batch")
        if candidate == batch_id:
            assert retrieved.status_code == 200
            assert body["id"] == batch_id
        elif routable(candidate):
            assert retrieved.status_code == 404
        if cancel:
            cancelled = quiet_api.request("POST", path_to("/v1/batches", candidate, "/cancel"))
            checked(cancelled, "Batch")
            if candidate == batch_id:
                assert cancelled.status_code in (200, 409)
            elif routable(candidate):
                assert cancelled.status_code == 404

    run()


# -- API keys ------------------------------------------------------------------------------------

_KEY_TEXT = st.sampled_from(
    [*KEYS.values(), "", " ", "sk-wrong", KEYS["alpha"].upper(), KEYS["alpha"][:-1], "Bearer"]
) | st.text(LATIN1, max_size=24)
_AUTH_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.tuples(
            st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Basic ", "", " Bearer "]),
            _KEY_TEXT,
            st.sampled_from(["", " ", "\t"]),
        ).map("".join),
        "api-key": _KEY_TEXT,
    },
)


def test_api_keys(auth_api: Api) -> None:
    """Any Authorization/api-key headers: 401 ``invalid_api_key`` in the envelope unless a key
    of the configuration is among them; a project's file visible to its own key only."""
    alpha_file = auth_api.upload(
        CHAT_LINES, "batch", "a.jsonl", headers={"authorization": f"Bearer {KEYS['alpha']}"}
    )
    batch_body = orjson.dumps(
        {"input_file_id": alpha_file["id"], "endpoint": CHAT, "completion_window": "24h"}
    )
    routes: list[tuple[str, str, bytes | None, str | None]] = [
        ("GET", f"/v1/files/{alpha_file['id']}", None, "OpenAIFile"),
        ("GET", f"/v1/files/{alpha_file['id']}/content", None, None),
        ("GET", "/v1/files", None, "ListFilesResponse"),
        ("GET", "/v1/batches?limit=2", None, "ListBatchesResponse"),
        ("POST", "/v1/batches", batch_body, "Batch"),
        ("POST", "/v1/files", UPLOAD, "OpenAIFile"),
        ("GET", "/v1/models", None, "ListModelsResponse"),
        ("POST", "/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "x"}', None),
        ("GET", "/health", None, None),
    ]

    @fuzz(80)
    @given(route=st.sampled_from(routes), headers=_AUTH_HEADERS)
    def run(route: tuple[str, str, bytes | None, str | None], headers: dict[str, str]) -> None:
        method, path, body, schema = route
        if path == "/v1/files" and method == "POST":
            headers = {**headers, "content-type": UPLOAD_TYPE}
        elif body is not None:
            headers = {**headers, "content-type": "application/json"}
        response = auth_api.send(method, path, body, headers)
        answer = checked(response, schema)
        given_keys = {
            project for project, key in KEYS.items() if any(key in v for v in headers.values())
        }
        if path == "/health":
            assert response.status_code == 200
        elif not given_keys:
            assert response.status_code == 401, response.text
            assert answer["error"]["code"] == "invalid_api_key"
        elif path.startswith(f"/v1/files/{alpha_file['id']}") and response.status_code != 401:
            # (with both keys in the headers, the one the server takes decides)
            expected = {"alpha": {200}, "beta": {404}}.get("".join(given_keys), {200, 404})
            assert response.status_code in expected, (headers, response.text)
        if response.status_code == 200 and path == "/v1/files" and method == "GET":
            listed = {item["id"] for item in answer["data"]}
            if given_keys == {"alpha"}:
                assert alpha_file["id"] in listed
            elif given_keys == {"beta"}:
                assert alpha_file["id"] not in listed

    run()
    auth_api.assert_quiet()
