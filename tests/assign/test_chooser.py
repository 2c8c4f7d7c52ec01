"""The choosers of messagehub.assignment: who gets the next conversation, without a database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messagehub.assignment import (ALL_AGENTS_AT_LIMIT, NO_AGENTS_AVAILABLE, Candidate,
                                   choose_agent, is_under_limit)

T0 = datetime(2024, 3, 11, 9, 0, tzinfo=timezone.utc)


def agent(name: str, *, open_count: int = 0, assigned_minutes_ago: int | None = None,
          availability: str = "online", joined: int = 0) -> Candidate:
    last = None if assigned_minutes_ago is None else T0 - timedelta(minutes=assigned_minutes_ago)
    return Candidate(agent_id=name, availability=availability, open_count=open_count,
                     last_assigned_at=last, joined_at=T0 - timedelta(days=100 - joined))


def test_round_robin__least_recently_assigned() -> None:
    candidates = [agent("kim", assigned_minutes_ago=1), agent("lee", assigned_minutes_ago=5),
                  agent("sato", assigned_minutes_ago=3)]

    chosen, reason = choose_agent(candidates, chooser="round_robin", limit=4)

    assert chosen is not None
    assert chosen.agent_id == "lee"
    assert reason == "round_robin"


def test_round_robin__never_assigned_first() -> None:
    candidates = [agent("kim", assigned_minutes_ago=50), agent("lee", joined=2),
                  agent("sato", joined=1)]

    chosen, _ = choose_agent(candidates, chooser="round_robin", limit=None)

    assert chosen is not None
    assert chosen.agent_id == "sato"


def test_round_robin__skips_agent_at_limit() -> None:
    candidates = [agent("kim", open_count=4, assigned_minutes_ago=9),
                  agent("lee", open_count=1, assigned_minutes_ago=1)]

    chosen, _ = choose_agent(candidates, chooser="round_robin", limit=4)

    assert chosen is not None
    assert chosen.agent_id == "lee"


def test_balanced__fewest_open_first() -> None:
    candidates = [agent("kim", open_count=3, assigned_minutes_ago=60),
                  agent("lee", open_count=1, assigned_minutes_ago=1)]

    chosen, reason = choose_agent(candidates, chooser="balanced", limit=None)

    assert chosen is not None
    assert chosen.agent_id == "lee"
    assert reason == "balanced"


def test_balanced__tie_goes_round_robin() -> None:
    candidates = [agent("kim", open_count=2, assigned_minutes_ago=1),
                  agent("lee", open_count=2, assigned_minutes_ago=7)]

    chosen, _ = choose_agent(candidates, chooser="balanced", limit=None)

    assert chosen is not None
    assert chosen.agent_id == "lee"


@pytest.mark.parametrize("availability", ["busy", "offline"])
def test_choose_agent__only_online(availability: str) -> None:
    candidates = [agent("kim", availability=availability)]

    chosen, reason = choose_agent(candidates, chooser="round_robin", limit=None)

    assert chosen is None
    assert reason == NO_AGENTS_AVAILABLE


def test_choose_agent__no_collaborators() -> None:
    assert choose_agent([], chooser="balanced", limit=4) == (None, NO_AGENTS_AVAILABLE)


def test_choose_agent__everyone_at_limit() -> None:
    candidates = [agent("kim", open_count=4), agent("lee", open_count=5),
                  agent("sato", open_count=0, availability="offline")]

    assert choose_agent(candidates, chooser="round_robin", limit=4) == (
        None, ALL_AGENTS_AT_LIMIT)


def test_choose_agent__unknown_chooser() -> None:
    with pytest.raises(ValueError, match="invalid chooser 'random'"):
        choose_agent([agent("kim")], chooser="random", limit=None)


candidate_lists = st.lists(
    st.builds(agent, st.sampled_from(["a", "b", "c", "d", "e"]),
              open_count=st.integers(0, 6),
              assigned_minutes_ago=st.one_of(st.none(), st.integers(0, 100)),
              availability=st.sampled_from(["online", "busy", "offline"]),
              joined=st.integers(0, 50)),
    max_size=6, unique_by=lambda c: c.agent_id)


@given(candidate_lists, st.sampled_from(["round_robin", "balanced"]),
       st.one_of(st.none(), st.integers(1, 5)))
def test_choose_agent__picks_only_eligible(candidates: list[Candidate], chooser: str,
                                           limit: int | None) -> None:
    chosen, reason = choose_agent(candidates, chooser=chooser, limit=limit)
    eligible = [c for c in candidates
                if c.availability == "online" and is_under_limit(c.open_count, limit)]

    if chosen is None:
        assert eligible == []
        assert reason in (NO_AGENTS_AVAILABLE, ALL_AGENTS_AT_LIMIT)
    else:
        assert chosen in eligible
        assert reason == chooser
    if chosen is not None and chooser == "balanced":
        assert chosen.open_count == min(c.open_count for c in eligible)
