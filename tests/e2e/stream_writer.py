"""A library writer process for the crash tests; the test kills it with SIGKILL.

    python -m tests.e2e.stream_writer OWNER_ID CONV_ID SEED [MAX_DELTAS]

The vault comes from ``MEMVAULT_*`` (``memvault.open()``). It streams the deltas
of ``unicode_deltas(SEED)`` into one reply and prints, flushed:

    ready <message_id>
    ack <persisted_seq> <chars persisted>      after every persist
    end <message_id>                           if it ever finishes

An ``ack`` line is printed only after ``write()`` returned with the chunk durable.
Run it with a long ``MEMVAULT_PERSIST_INTERVAL_MS`` so chunks are cut by count
only: then, whenever ``persisted_seq`` moves, everything written is persisted.
"""

from __future__ import annotations

import sys

import memvault

from .streaming_support import unicode_deltas


def main(argv: list[str]) -> int:
    owner, conv_id, seed = argv[0], argv[1], argv[2]
    max_deltas = int(argv[3]) if len(argv) > 3 else 10_000_000
    vault = memvault.open()
    convs = vault.for_user(owner).conversations
    out = sys.stdout
    gen = unicode_deltas(seed)
    with convs.stream(conv_id, author="bot") as reply:
        out.write(f"ready {reply.message_id}\n")
        out.flush()
        acked = 0
        for _ in range(max_deltas):
            reply.write(next(gen))
            seq = reply.persisted_seq
            if seq != acked:
                acked = seq
                out.write(f"ack {seq} {len(reply.text)}\n")
                out.flush()
    out.write(f"end {reply.message_id}\n")
    out.flush()
    vault.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
