"""A library process for the job crash test; the test kills it with SIGKILL.

    python -m tests.e2e.job_worker KIND

The vault comes from ``MEMVAULT_*`` (``memvault.open()``, runners started). Its
handler for ``KIND`` prints ``claimed <job_id> <attempt>`` (flushed) and then
blocks forever, holding the job's lease until the process dies.
"""

from __future__ import annotations

import sys
import threading

import memvault
from memvault.jobs import Job


def main(argv: list[str]) -> int:
    kind = argv[0]
    vault = memvault.open()
    forever = threading.Event()

    def handler(job: Job) -> None:
        sys.stdout.write(f"claimed {job.id} {job.attempts}\n")
        sys.stdout.flush()
        forever.wait()

    vault.jobs.register_handler(kind, handler)
    forever.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
