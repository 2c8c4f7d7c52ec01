"""Scoring of a threading against ground truth, and the header union-find baseline.

``messagehub thread-eval`` calls :func:`pairwise_scores` with the ground
truth of a corpus (file name to thread label) and the conversation each
file ended up in, and :func:`references_baseline` for the figure a
helpdesk that only joins Message-ID, In-Reply-To and References would get.
Pure functions; no stack needed.

Pairwise scores count pairs of files: a pair is predicted when both files
are in one conversation and true when both carry one label. Precision is
correct predicted pairs over predicted pairs, recall correct pairs over
true pairs. A file that is in no conversation (it became a notice) is
a cluster of its own.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    threads: int  # distinct labels in the ground truth
    clusters: int  # distinct predicted clusters over the same files
    exact_threads: int  # ground-truth threads whose files form exactly one cluster


def _pairs(count: int) -> int:
    return count * (count - 1) // 2


def pairwise_scores(truth: Mapping[str, str], predicted: Mapping[str, str]) -> Scores:
    """Score ``predicted`` (file to cluster) against ``truth`` (file to label).

    Only files of ``truth`` count. With no pair on one side, the matching
    score is 1.0: nothing was there to find, or nothing was claimed.
    """
    clusters = {name: predicted.get(name, f"unplaced:{name}") for name in truth}

    true_pairs = sum(_pairs(n) for n in Counter(truth.values()).values())
    predicted_pairs = sum(_pairs(n) for n in Counter(clusters.values()).values())
    correct_pairs = sum(_pairs(n) for n in Counter(
        (truth[name], clusters[name]) for name in truth).values())

    precision = correct_pairs / predicted_pairs if predicted_pairs else 1.0
    recall = correct_pairs / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision=precision, recall=recall, f1=f1, true_pairs=true_pairs,
                  predicted_pairs=predicted_pairs, correct_pairs=correct_pairs,
                  threads=len(set(truth.values())), clusters=len(set(clusters.values())),
                  exact_threads=_exact_threads(truth, clusters))


def _exact_threads(truth: Mapping[str, str], clusters: Mapping[str, str]) -> int:
    files_of_label: dict[str, set[str]] = {}
    files_of_cluster: dict[str, set[str]] = {}
    for name, label in truth.items():
        files_of_label.setdefault(label, set()).add(name)
        files_of_cluster.setdefault(clusters[name], set()).add(name)
    return sum(1 for files in files_of_label.values()
               if files_of_cluster[clusters[next(iter(files))]] == files)


# ---------------------------------------------------------------------------
# The References-only baseline
# ---------------------------------------------------------------------------

_BRACKETED = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True)
class HeaderIds:
    """The ids a naive threader reads from a mail, as every "<...>" token."""

    message_id: str | None
    related: list[str]  # In-Reply-To and References tokens


def naive_header_ids(raw: bytes) -> HeaderIds:
    """Read Message-ID, In-Reply-To and References the way a naive helpdesk does.

    Every bracketed token counts, addresses in free text included; that is
    the baseline's known weakness.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    own = _BRACKETED.findall(str(headers.get("Message-ID", "")))
    related: list[str] = []
    for name in ("In-Reply-To", "References"):
        for value in headers.get_all(name, []):
            related += _BRACKETED.findall(str(value))
    return HeaderIds(message_id=own[0] if own else None, related=related)


def references_baseline(mails: Mapping[str, HeaderIds]) -> dict[str, str]:
    """Cluster files by union-find over Message-ID, In-Reply-To and References.

    A file without a Message-ID is a node of its own.
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(left: str, right: str) -> None:
        parent[find(left)] = find(right)

    node_of: dict[str, str] = {}
    for name, ids in mails.items():
        node = f"id:{ids.message_id}" if ids.message_id else f"file:{name}"
        node_of[name] = node
        find(node)
        for related in ids.related:
            union(node, f"id:{related}")
    return {name: find(node) for name, node in node_of.items()}
