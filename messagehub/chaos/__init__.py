"""The chaos harness: evidence that no mail is lost or doubled when things break.

``messagehub chaos`` and ``tests/chaos`` run :func:`run`: mail is imported
into a local stack while its processes are killed, Kafka and PostgreSQL are
restarted and the SMTP server goes away, and the end state is checked
against the guarantees of the architecture. See :mod:`messagehub.chaos.harness`
for the steps, :mod:`messagehub.chaos.faults` for the faults and
:mod:`messagehub.chaos.verify` for the checks.
"""

from messagehub.chaos.harness import ChaosOptions, passed, run

__all__ = ["ChaosOptions", "passed", "run"]
