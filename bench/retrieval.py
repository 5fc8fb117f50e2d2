"""Retrieval throughput and latency: ingestion, text/hybrid search at 100,000
chunks, and ``/api/chat`` time to first byte.

- **Ingestion**: documents of ~2,000 words (plain text) uploaded with
  ``scope.files.add`` and waited for with ``scope.files.wait_indexed``; the
  vault's own ingest job (one job worker, the default) extracts, chunks, embeds
  and inserts them. Measured with ``embedder=local`` and ``embedder=hash``:
  hash embeds in ~1 ms a chunk, so the local run's extra time is the model's
  share. Each run is a fresh vault, so the embedding cache (a table of the
  vault's database) starts empty; the local model is loaded before the clock
  starts (its load time is reported apart).
- **Search**: one entity holding 100,000 client records (``collections.add``,
  batches of 1,000, embeddings given by the client: the ``hash`` embedder's
  vectors of each text, computed here, so that the vault — opened with
  ``embedder=hash`` — embeds query strings into the same space). Then
  ``collections.search(query=…, mode=text|hybrid|vector, k=10)`` with queries
  of 2–3 real words of the corpus, in alternating rounds. Each row also gives
  the share of the call spent inside the database driver (SQLAlchemy
  ``before/after_cursor_execute``), the rest being Python around it.
- **Chat**: a real ``memvault serve`` (one worker, ``embedder=local``,
  ``responder=extractive``) over the ingestion run's indexed documents;
  ``POST /api/chat`` with ``stream: true`` and a different question each time:
  time to the ``message`` event (user message stored, retrieval done, reply
  opened), to the first ``chunk`` event and to ``done``.

The text is synthetic but word-realistic: the 5,000 most frequent whole words
of the BERT vocabulary (all-MiniLM-L6-v2's tokenizer, ordered roughly by
frequency), drawn with Zipf frequencies (s = 1.07), each document or record
leaning towards 25 topic words of its own, cut into sentences and paragraphs.

Run alone (pins itself, the threads and the servers it starts to one CPU)::

    python bench/retrieval.py --backend sqlite|postgresql [--quick] [--profile]
                              [--output notes.md]

or as the ``retrieval`` section of ``bench/run.py``.
"""

from __future__ import annotations

import os

# Before numpy loads its BLAS (only effective when this file is the entry point).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

if __package__ in (None, ""):  # run as `python bench/retrieval.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

from bench.common import (  # noqa: E402
    Config,
    Env,
    PostgresServer,
    Result,
    Stats,
    Timer,
    fmt_ms,
    fmt_rate,
    machine_info,
    measure_interleaved,
    pin_one_cpu,
    settle,
    stats,
)
from memvault.models import SearchMode  # noqa: E402

SECTION = "retrieval"
SEED = 6
VOCABULARY = 5_000
ZIPF_S = 1.07
TOPIC_WORDS = 25
TOPIC_SHARE = 0.15
ADD_BATCH = 1_000
K = 10
PASSWORD = "bench-password"


@dataclass(frozen=True)
class Sizes:
    docs: int            # documents ingested per embedder
    doc_words: int
    chunks: int          # records in the searched entity
    queries: int         # timed searches per mode
    chats: int           # timed /api/chat requests

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        if quick:
            return cls(docs=20, doc_words=2_000, chunks=20_000, queries=100, chats=30)
        return cls(docs=50, doc_words=2_000, chunks=100_000, queries=300, chats=50)


# -- corpus -------------------------------------------------------------------------------

def vocabulary(size: int = VOCABULARY) -> list[str]:
    """Whole lower-case words of the BERT vocabulary in its order (which
    follows word frequency after the first ~2,000 special and single-character
    entries)."""
    spec = resources.files("memvault.retrieval").joinpath(
        "models", "all-MiniLM-L6-v2", "tokenizer.json").read_text(encoding="utf-8")
    vocab: dict[str, int] = json.loads(spec)["model"]["vocab"]
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])
             if w.isascii() and w.isalpha() and w.islower() and len(w) > 1]
    return words[:size]


class Corpus:
    """Seeded word-realistic text: Zipf-distributed words, topic words per text."""

    def __init__(self, seed: int = SEED) -> None:
        self.words = vocabulary()
        ranks = np.arange(1, len(self.words) + 1, dtype=np.float64)
        p = ranks ** -ZIPF_S
        self.p = p / p.sum()
        self.rng = np.random.default_rng(seed)

    def _draw(self, n: int) -> list[str]:
        rng = self.rng
        picked = rng.choice(len(self.words), size=n, p=self.p)
        topic = rng.integers(200, len(self.words), size=TOPIC_WORDS)
        swap = rng.random(n) < TOPIC_SHARE
        picked[swap] = topic[rng.integers(0, TOPIC_WORDS, size=int(swap.sum()))]
        return [self.words[i] for i in picked]

    def text(self, n_words: int, paragraphs: bool = True) -> str:
        """About ``n_words`` words in sentences of 6–22 words, and in paragraphs
        of 3–7 sentences when ``paragraphs``."""
        words = self._draw(n_words)
        sentences: list[str] = []
        i = 0
        while i < len(words):
            n = int(self.rng.integers(6, 23))
            part = words[i:i + n]
            i += n
            sentences.append(part[0].capitalize() + " " + " ".join(part[1:]) + ".")
        if not paragraphs:
            return " ".join(sentences)
        out: list[str] = []
        j = 0
        while j < len(sentences):
            n = int(self.rng.integers(3, 8))
            out.append(" ".join(sentences[j:j + n]))
            j += n
        return "\n\n".join(out)

    def query(self, words: int) -> str:
        """``words`` distinct words of ranks 100–3,000 (content words that the
        corpus holds, neither stop words nor rarities)."""
        picked = self.rng.choice(np.arange(100, 3_000), size=words, replace=False)
        return " ".join(self.words[i] for i in picked)


# -- helpers ---------------------------------------------------------------------------------

class DbClock:
    """Time spent inside the database driver (cursor execute) of an engine."""

    def __init__(self, engine: Any) -> None:
        import sqlalchemy as sa

        self.ns = 0
        self._t0 = 0
        self._engine = engine
        self._sa = sa
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self._t0 = time.perf_counter_ns()

    def _after(self, *args: Any) -> None:
        self.ns += time.perf_counter_ns() - self._t0

    def close(self) -> None:
        self._sa.event.remove(self._engine, "before_cursor_execute", self._before)
        self._sa.event.remove(self._engine, "after_cursor_execute", self._after)


def _rate_note(docs: int, chunks: int, seconds: float) -> str:
    return f"{fmt_rate(docs, seconds, 'docs')}, {fmt_rate(chunks, seconds, 'chunks')}"


def log(line: str) -> None:
    print(line, flush=True)


def show(results: list[Result]) -> list[Result]:
    """Print rows as soon as they are measured (a long run shows progress)."""
    for r in results:
        s = r.stats
        head = f"    {r.operation:<44}"
        if s:
            head += f" p50 {fmt_ms(s.p50_ns):>10}  p99 {fmt_ms(s.p99_ns):>10}"
        log(f"{head}  {r.throughput}  {r.note}")
    return results


# -- ingestion -------------------------------------------------------------------------------

@dataclass
class Ingested:
    embedder: str
    docs: int
    chunks: int
    failed: int
    upload_s: float
    wall_s: float
    load_s: float
    cache: str


def ingest(vault: Any, owner_id: str, sizes: Sizes, corpus: Corpus, embedder: str
           ) -> tuple[Ingested, str]:
    """Upload ``sizes.docs`` documents and wait until indexed; returns the
    figures and the entity id."""
    scope = vault.for_user(owner_id)
    entity = scope.entities.create(f"ingest-{embedder}").entity_id
    with Timer() as load:
        embedder_obj = vault.embedder
        embedder_obj.embedder.embed(["warm up the model"])  # bypass the cache: it stays empty
    texts = [corpus.text(sizes.doc_words) for _ in range(sizes.docs)]
    with Timer() as wall:
        ids = [scope.files.add(entity, f"doc-{i}.txt", t.encode()).doc_id
               for i, t in enumerate(texts)]
        upload_s = (time.perf_counter_ns() - wall.t0) / 1e9
        docs = scope.files.wait_indexed(entity, ids, timeout_s=3_600)
    cache = embedder_obj.stats()
    return Ingested(embedder=embedder, docs=len(docs),
                    chunks=sum(d.chunk_count or 0 for d in docs),
                    failed=sum(d.status != "indexed" for d in docs), upload_s=upload_s,
                    wall_s=wall.s, load_s=load.s,
                    cache=f"cache {cache.hits} hits / {cache.misses} misses"), entity


def ingest_result(got: Ingested, sizes: Sizes, other: Ingested | None = None) -> Result:
    note = (f"{got.docs} docs × ~{sizes.doc_words:,} words → {got.chunks:,} chunks in "
            f"{got.wall_s:.1f}s (uploads {got.upload_s:.2f}s); fresh embedding cache, "
            f"{got.cache}")
    if got.failed:
        note += f"; {got.failed} NOT indexed"
    if got.embedder == "local":
        note += f"; model loaded beforehand in {got.load_s:.1f}s"
    if other is not None and got.wall_s > 0:
        per_local = got.wall_s / max(got.chunks, 1)
        per_hash = other.wall_s / max(other.chunks, 1)
        share = max(0.0, 1 - per_hash / per_local)
        note += f"; the model is ~{share:.0%} of the time per chunk"
    return Result(SECTION, f"ingest, embedder={got.embedder}", None,
                  throughput=_rate_note(got.docs, got.chunks, got.wall_s), target="—",
                  note=note)


# -- search at 100k chunks -------------------------------------------------------------------

def _fill(vault: Any, scope: Any, entity: str, sizes: Sizes, corpus: Corpus) -> float:
    """Insert ``sizes.chunks`` records with hash embeddings; returns seconds."""
    from memvault.retrieval.embedders import HashEmbedder

    hasher = HashEmbedder(vault.embedder.dimensions)
    spent = 0
    done = 0
    while done < sizes.chunks:
        n = min(ADD_BATCH, sizes.chunks - done)
        texts = [corpus.text(int(corpus.rng.integers(100, 201)), paragraphs=False)
                 for _ in range(n)]
        vectors = hasher.embed(texts)
        items = [{"id": f"r{done + i}", "text": t, "embedding": v}
                 for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]
        t0 = time.perf_counter_ns()
        scope.collections.add(entity, items)
        spent += time.perf_counter_ns() - t0
        done += n
        if done % 20_000 == 0:
            log(f"    {done:,} records ({done / (spent / 1e9):,.0f}/s in collections.add)")
    return spent / 1e9


def search(env: Env, sizes: Sizes, corpus: Corpus, profile: bool = False) -> list[Result]:
    out: list[Result] = []
    with env.vault(embedder="hash") as vault:
        scope = vault.for_user(env.user(vault))
        entity = scope.entities.create("search").entity_id
        log(f"  filling {sizes.chunks:,} records …")
        fill_s = _fill(vault, scope, entity, sizes, corpus)
        settle(vault)
        out.append(Result(SECTION, "collections.add, 1,000 records a call", None,
                          throughput=fmt_rate(sizes.chunks, fill_s, "records"), target="—",
                          note=f"{sizes.chunks:,} records of 100–200 words with 384-d "
                               f"embeddings given, {fill_s:.0f}s in add()"))
        def queries() -> list[str]:
            return [corpus.query(int(corpus.rng.integers(2, 4))) for _ in range(sizes.queries)]

        with Timer() as first:
            scope.collections.search(entity, query=corpus.query(2), k=K, mode="vector")
        out.append(Result(SECTION, f"first vector search after the fill ({sizes.chunks:,})",
                          None, throughput=f"{first.s * 1000:,.0f} ms", target="—",
                          note="SQLite: catches the ANN index up from the rows (builds it)"
                          if vault.backend == "sqlite" else "PostgreSQL: HNSW already built"))
        # Each variant its own queries, so that every hybrid/vector search embeds
        # a query the cache has not seen (what a user's new question costs), but
        # "hybrid, repeated": hybrid's queries again, just after, from the cache.
        variants: dict[str, tuple[SearchMode, list[str]]] = {
            "text": ("text", queries()), "hybrid": ("hybrid", queries()),
            "vector": ("vector", queries())}
        variants["hybrid, repeated"] = ("hybrid", variants["hybrid"][1])
        warm = queries()
        clock = DbClock(vault.db.engine)
        db_ns: dict[str, int] = {}
        hits: dict[str, int] = {}

        def searcher(name: str) -> Callable[[int], Any]:
            mode, qs = variants[name]

            def call(i: int) -> Any:
                before = clock.ns
                got = scope.collections.search(entity, query=qs[i] if i >= 0 else warm[-i],
                                               k=K, mode=mode)
                if i >= 0:
                    db_ns[name] = db_ns.get(name, 0) + clock.ns - before
                    hits[name] = hits.get(name, 0) + len(got.results)
                return got
            return call

        measured = measure_interleaved({name: searcher(name) for name in variants},
                                       sizes.queries, round_size=50, warmup=10)
        clock.close()
        text_p50 = measured["text"].p50_ns
        for name, (mode, _) in variants.items():
            s = measured[name]
            total = s.mean_ns * s.n
            share = db_ns.get(name, 0) / total if total else 0.0
            note = (f"{sizes.chunks:,} chunks, k={K}, 2–3-word queries; "
                    f"{share:.0%} of the time in driver execute calls; "
                    f"{hits.get(name, 0) / s.n:.1f} hits a query")
            if mode != "text" and text_p50:
                note += f"; p50 {s.p50_ns / text_p50:.2f}× text's"
            if mode != "text":
                note += ("; query embedding from the cache" if name.endswith("repeated")
                         else "; query new to the embedding cache (hash embedder)")
            out.append(Result(SECTION, f"search {name}", s,
                              throughput=f"{1e9 / s.mean_ns:,.0f} searches/s" if s.mean_ns
                              else "", target="—", note=note))
        if profile:
            for mode in ("text", "hybrid", "vector"):
                qs = queries()
                log(f"\n  cProfile, 100 searches mode={mode}, new queries ({vault.backend}):")
                log(profiled(lambda i, m=mode, q=qs: scope.collections.search(  # type: ignore[misc]
                    entity, query=q[i], k=K, mode=m), min(100, len(qs))))
    return out


def profiled(fn: Callable[[int], Any], n: int, top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        fn(i)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# -- /api/chat through a real server ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(settings: Any, **extra: str) -> Iterator[str]:
    """``memvault serve`` (one worker) on the vault's store; yields its URL."""
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMVAULT_")}
    env.update({"MEMVAULT_DATA_DIR": str(settings.data_dir),
                "MEMVAULT_PASSWORD_HASH": settings.password_hash,
                "MEMVAULT_EMBEDDER": settings.embedder, "MEMVAULT_LOG_LEVEL": "WARNING"})
    if settings.database_url:
        env["MEMVAULT_DATABASE_URL"] = settings.database_url
    env.update({f"MEMVAULT_{k.upper()}": v for k, v in extra.items()})
    logfile = Path(settings.data_dir).parent / f"serve-{port}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memvault", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"memvault serve exited:\n{logfile.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"memvault serve not ready:\n{logfile.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _one_chat(client: Any, auth: dict[str, str], sid: str, question: str
              ) -> tuple[int, int, int]:
    """ns to the ``message`` event, to the first ``chunk`` event, to ``done``."""
    clock = time.perf_counter_ns
    t0 = clock()
    first_message = first_chunk = 0
    with client.stream("POST", "/api/chat", headers=auth,
                       json={"session_id": sid, "message": question, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("event:"):
                continue
            kind = line.partition(":")[2].strip()
            if kind == "message" and not first_message:
                first_message = clock() - t0
            elif kind == "chunk" and not first_chunk:
                first_chunk = clock() - t0
            elif kind == "done":
                return first_message, first_chunk, clock() - t0
    raise RuntimeError("the chat stream ended without a done event")


def chat(vault: Any, entity_owner_email: str, entity: str, sizes: Sizes,
         corpus: Corpus) -> list[Result]:
    import httpx

    questions = [f"What do the documents say about {corpus.query(1)} and {corpus.query(1)}?"
                 for _ in range(sizes.chats + 5)]
    with serve(vault.settings, responder="extractive") as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/api/auth/login",
                        json={"email": entity_owner_email, "password": PASSWORD})
        r.raise_for_status()
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        sid = client.post("/api/chat/sessions", headers=auth,
                          json={"entity_id": entity}).json()["session_id"]
        for q in questions[:5]:  # loads the model in the server, warms the paths
            _one_chat(client, auth, sid, q)
        got = [_one_chat(client, auth, sid, q) for q in questions[5:]]
    first = stats([g[0] for g in got])
    chunk = stats([g[1] for g in got])
    done = stats([g[2] for g in got])
    where = (f"memvault serve (1 worker, embedder={vault.settings.embedder}, extractive), "
             f"SSE over loopback HTTP, k=5 hybrid")
    return [
        Result(SECTION, "/api/chat stream: first byte (message event)", first, target="—",
               note=f"{where}; user message stored + retrieval + reply opened"),
        Result(SECTION, "/api/chat stream: first chunk event", chunk, target="—",
               note=f"p50 {chunk.p50_ns / max(first.p50_ns, 1):.2f}× the message event's"),
        Result(SECTION, "/api/chat stream: done event", done, target="—",
               note="whole extractive reply streamed and stored"),
    ]


# -- the section -----------------------------------------------------------------------------

def run(env: Env, *, profile: bool = False) -> list[Result]:
    """The ``retrieval`` section of bench/run.py (and this file's body)."""
    sizes = Sizes.make(env.config.quick)
    corpus = Corpus()
    out: list[Result] = []
    log(f"  ingest {sizes.docs} documents, embedder=hash …")
    with env.vault(embedder="hash") as vault:
        hashed, _ = ingest(vault, env.user(vault), sizes, corpus, "hash")
    out += show([ingest_result(hashed, sizes)])
    log(f"  ingest {sizes.docs} documents, embedder=local …")
    email = f"chat-{os.getpid()}-{time.monotonic_ns()}@example.com"
    with env.vault(embedder="local") as vault:
        owner = vault.users.register(email, PASSWORD).id
        local, entity = ingest(vault, owner, sizes, corpus, "local")
        out += show([ingest_result(local, sizes, hashed)])
        log(f"  /api/chat × {sizes.chats} …")
        out += show(chat(vault, email, entity, sizes, corpus))
    log(f"  search at {sizes.chunks:,} chunks …")
    out += show(search(env, sizes, corpus, profile=profile))
    return out


def markdown(backend: str, results: list[Result], info: dict[str, str]) -> str:
    lines = [f"### {backend}", "", "  ".join(f"{k}: {v};" for k, v in info.items()), "",
             "| operation | p50 | p99 | throughput | notes |", "|---|--:|--:|--:|---|"]
    for r in results:
        s: Stats | None = r.stats
        lines.append(f"| {r.operation} | {fmt_ms(s.p50_ns) if s else ''} | "
                     f"{fmt_ms(s.p99_ns) if s else ''} | {r.throughput} | "
                     f"{r.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of text and hybrid searches")
    parser.add_argument("--all-cpus", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--output", type=Path, help="append a markdown table to this file")
    args = parser.parse_args(argv)

    from memvault.logs import configure_logging
    from memvault.settings import load_settings

    configure_logging(load_settings(log_level="WARNING"))
    if not args.all_cpus:
        cpus = pin_one_cpu()
        log(f"pinned to CPU {max(cpus)} (of {len(cpus)})")
    pg = PostgresServer() if args.backend == "postgresql" else None
    env = Env(backend=args.backend, config=Config.make(args.quick), pg=pg)
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    pg_version = pg.version() if pg is not None else None
    try:
        results = run(env, profile=args.profile)
    finally:
        env.close()
        if pg is not None:
            pg.stop()
    info = machine_info(pg_version)
    keep = ("date", "cpu", "python", "sqlite", "postgresql", "memvault")
    info = {k: v for k, v in info.items() if k in keep}
    info["load average at start / end"] = (
        f"{load0} / " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    info["cpus used"] = "all" if args.all_cpus else "1 (pinned)"
    info["run time"] = f"{time.perf_counter() - started:.0f}s"
    log("")
    for r in results:
        s = r.stats
        head = f"{r.operation:<48}"
        if s:
            head += f" p50 {fmt_ms(s.p50_ns):>10}  p99 {fmt_ms(s.p99_ns):>10}"
        log(f"{head}  {r.throughput}  {r.note}")
    if args.output:
        with open(args.output, "a") as fh:
            fh.write("\n" + markdown(args.backend, results, info))
        log(f"\nappended to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
