"""The end-to-end benchmark of messagehub: ``messagehub bench`` or ``python -m bench``.

See :mod:`bench.command` for the command, :mod:`bench.pipeline` for the
phases and ``docs/performance.md`` for the latest figures.
"""
