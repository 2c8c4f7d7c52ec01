"""Pairwise threading scores and the References union-find baseline."""

from __future__ import annotations

from services.router import evaluation


def test_pairwise_scores__perfect_threading() -> None:
    truth = {"a": "t1", "b": "t1", "c": "t2"}

    scores = evaluation.pairwise_scores(truth, {"a": "x", "b": "x", "c": "y"})

    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)
    assert scores.exact_threads == 2
    assert scores.clusters == 2


def test_pairwise_scores__split_thread_loses_recall() -> None:
    truth = {"a": "t1", "b": "t1", "c": "t1"}

    scores = evaluation.pairwise_scores(truth, {"a": "x", "b": "x", "c": "y"})

    assert scores.true_pairs == 3
    assert scores.predicted_pairs == 1
    assert scores.correct_pairs == 1
    assert scores.precision == 1.0
    assert scores.recall == 1 / 3
    assert scores.f1 == 0.5
    assert scores.exact_threads == 0


def test_pairwise_scores__merged_threads_lose_precision() -> None:
    truth = {"a": "t1", "b": "t1", "c": "t2", "d": "t2"}

    scores = evaluation.pairwise_scores(truth, {"a": "x", "b": "x", "c": "x", "d": "x"})

    assert scores.predicted_pairs == 6
    assert scores.correct_pairs == 2
    assert scores.precision == 2 / 6
    assert scores.recall == 1.0


def test_pairwise_scores__unplaced_file_is_its_own_cluster() -> None:
    truth = {"a": "t1", "b": "t1"}

    scores = evaluation.pairwise_scores(truth, {"a": "x"})

    assert scores.clusters == 2
    assert scores.recall == 0.0
    assert scores.f1 == 0.0


def test_pairwise_scores__singletons_only_score_one() -> None:
    scores = evaluation.pairwise_scores({"a": "t1", "b": "t2"}, {"a": "x", "b": "y"})

    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)


def test_naive_header_ids__takes_every_bracketed_token() -> None:
    raw = (b"Message-ID: <m2@example.org>\r\n"
           b"In-Reply-To: Message from Ralf <ralf@example.org>\r\n"
           b"References: <m0@example.org>\r\n <m1@example.org>\r\n\r\nbody\r\n")

    ids = evaluation.naive_header_ids(raw)

    assert ids.message_id == "m2@example.org"
    assert ids.related == ["ralf@example.org", "m0@example.org", "m1@example.org"]


def test_references_baseline__joins_through_unknown_root() -> None:
    mails = {
        "root.eml": evaluation.HeaderIds("r@x", []),
        "reply.eml": evaluation.HeaderIds("a@x", ["r@x"]),
        "sibling.eml": evaluation.HeaderIds("b@x", ["unknown@x"]),
        "cousin.eml": evaluation.HeaderIds("c@x", ["unknown@x"]),
        "no-id.eml": evaluation.HeaderIds(None, []),
    }

    clusters = evaluation.references_baseline(mails)

    assert clusters["root.eml"] == clusters["reply.eml"]
    assert clusters["sibling.eml"] == clusters["cousin.eml"]
    assert clusters["root.eml"] != clusters["sibling.eml"]
    assert len(set(clusters.values())) == 3
