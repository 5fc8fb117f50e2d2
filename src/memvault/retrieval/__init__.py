"""Retrieval (issue 6): embedders, text extraction and chunking.

The building blocks come first, as pure modules with no tables: ``embedders``
(the ``Embedder`` protocol and its ``local``, ``openai`` and ``hash``
implementations), ``extract`` (text from uploaded files) and ``chunking``
(paragraph- and sentence-aware chunks with offsets). Collections, ingestion
jobs and search build on them.
"""
