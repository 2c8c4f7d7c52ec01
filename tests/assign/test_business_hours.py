"""Business-hours arithmetic: examples, and properties over many zones and transitions."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from messagehub import business_hours as bh
from messagehub.business_hours import Interval, Schedule

WEEKDAYS_9_TO_17 = {day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
UTC = timezone.utc


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_york() -> Schedule:
    return bh.schedule_from_settings("America/New_York", WEEKDAYS_9_TO_17)


# --- the reported DST case, as a table ----------------------------------------

# Arrival instants (INTERNALDATE, UTC) of the reported daylight-saving case,
# and whether the inbox is open then.
DST_CASE = [
    ("A", "America/New_York", "2024-03-11T13:30:00Z", True),   # Mon 09:30 EDT
    ("B", "America/New_York", "2024-03-11T12:30:00Z", False),  # Mon 08:30 EDT
    ("C", "America/New_York", "2024-03-08T13:30:00Z", False),  # Fri 08:30 EST
    ("D", "America/New_York", "2024-11-04T13:30:00Z", False),  # Mon 08:30 EST
    ("E", "America/New_York", "2024-11-04T14:30:00Z", True),   # Mon 09:30 EST
    ("F", "America/New_York", "2024-03-10T14:30:00Z", False),  # Sun, switch day
    ("G", "Asia/Tokyo", "2024-03-11T00:30:00Z", True),         # Mon 09:30 JST
]


@pytest.mark.parametrize(("name", "zone", "arrival", "expected"), DST_CASE,
                         ids=[row[0] for row in DST_CASE])
def test_is_open__reported_dst_case(name: str, zone: str, arrival: str, expected: bool) -> None:
    closes = "18:00" if zone == "Asia/Tokyo" else "17:00"
    hours = {day: [["09:00", closes]] for day in ("mon", "tue", "wed", "thu", "fri")}
    schedule = bh.schedule_from_settings(zone, hours)

    assert bh.is_open(schedule, utc(arrival)) is expected


def test_next_opening__after_spring_forward_weekend() -> None:
    opening = bh.next_opening(new_york(), utc("2024-03-10T14:30:00Z"))

    assert opening == utc("2024-03-11T13:00:00Z")
    assert bh.format_opening(opening, ZoneInfo("America/New_York"), "en") == (
        "Monday 11 March 2024, 09:00 EDT")


def test_next_opening__same_morning_before_fall_back_week() -> None:
    assert bh.next_opening(new_york(), utc("2024-11-04T13:30:00Z")) == utc("2024-11-04T14:00:00Z")


def test_next_opening__open_now_returns_now() -> None:
    at = utc("2024-03-11T13:30:00Z")

    assert bh.next_opening(new_york(), at) == at


# --- midnight, night shifts, holidays -----------------------------------------


def test_interval_ending_at_midnight__open_until_2400() -> None:
    schedule = bh.schedule_from_settings("Europe/Berlin", {"mon": [["18:00", "24:00"]]})

    assert bh.is_open(schedule, utc("2024-01-15T22:59:59Z"))      # Mon 23:59:59 CET
    assert not bh.is_open(schedule, utc("2024-01-15T23:00:00Z"))  # Tue 00:00 CET


def test_interval_closing_0000__same_as_2400() -> None:
    with_2400 = bh.schedule_from_settings("Europe/Berlin", {"mon": [["18:00", "24:00"]]})
    with_0000 = bh.schedule_from_settings("Europe/Berlin", {"mon": [["18:00", "00:00"]]})
    first_day = date(2024, 1, 1)

    assert bh.open_ranges(with_2400, first_day, first_day + timedelta(days=30)) == (
        bh.open_ranges(with_0000, first_day, first_day + timedelta(days=30)))


def test_night_shift__runs_into_next_day() -> None:
    schedule = bh.schedule_from_settings("Asia/Tokyo", {"fri": [["22:00", "06:00"]]})

    assert bh.is_open(schedule, utc("2024-03-08T20:00:00Z"))      # Sat 05:00 JST
    assert not bh.is_open(schedule, utc("2024-03-08T21:00:00Z"))  # Sat 06:00 JST
    assert not bh.is_open(schedule, utc("2024-03-08T12:59:00Z"))  # Fri 21:59 JST


def test_night_shift__over_fall_back_lasts_nine_hours() -> None:
    schedule = bh.schedule_from_settings("America/New_York", {"sat": [["22:00", "06:00"]]})

    [(start, end)] = bh.open_ranges(schedule, date(2024, 11, 2), date(2024, 11, 2))

    assert end - start == timedelta(hours=9)


def test_adjacent_intervals__merge_into_one_range() -> None:
    schedule = bh.schedule_from_settings(
        "UTC", {"mon": [["18:00", "24:00"]], "tue": [["00:00", "06:00"]]})

    ranges = bh.open_ranges(schedule, date(2024, 1, 15), date(2024, 1, 16))

    assert ranges == [(utc("2024-01-15T18:00:00Z"), utc("2024-01-16T06:00:00Z"))]


def test_holiday__closed_all_day() -> None:
    schedule = bh.schedule_from_settings("America/New_York", WEEKDAYS_9_TO_17,
                                         holidays=["2024-12-25"])

    assert not bh.is_open(schedule, utc("2024-12-25T15:00:00Z"))
    assert bh.next_opening(schedule, utc("2024-12-25T15:00:00Z")) == utc("2024-12-26T14:00:00Z")


def test_holiday__cuts_night_shift_at_its_midnight() -> None:
    schedule = bh.schedule_from_settings("UTC", {"tue": [["22:00", "06:00"]]},
                                         holidays=[date(2024, 1, 17)])

    assert bh.is_open(schedule, utc("2024-01-16T23:59:00Z"))
    assert not bh.is_open(schedule, utc("2024-01-17T00:00:00Z"))


def test_open_all_day__every_instant_open() -> None:
    schedule = Schedule(ZoneInfo("Europe/London"), ((Interval(time(0), None),),) * 7)

    for hour in range(0, 24 * 7, 5):
        assert bh.is_open(schedule, utc("2024-03-30T00:00:00Z") + timedelta(hours=hour))


def test_always_closed__no_next_opening() -> None:
    schedule = bh.schedule_from_settings("UTC", {})

    assert bh.next_opening(schedule, utc("2024-01-01T00:00:00Z")) is None


def test_holidays_for_a_year__next_opening_after_them() -> None:
    holidays = [date(2024, 1, 1) + timedelta(days=n) for n in range(370)]
    schedule = bh.schedule_from_settings("UTC", WEEKDAYS_9_TO_17, holidays=holidays)

    assert bh.next_opening(schedule, utc("2024-01-01T00:00:00Z")) == utc("2025-01-06T09:00:00Z")


# --- DST transitions in unusual zones -------------------------------------------


def test_opening_in_spring_forward_gap__opens_at_the_change() -> None:
    schedule = bh.schedule_from_settings("America/New_York", {"sun": [["02:30", "05:00"]]})

    [(start, end)] = bh.open_ranges(schedule, date(2024, 3, 10), date(2024, 3, 10))

    assert start == utc("2024-03-10T07:00:00Z")  # 02:00 EST becomes 03:00 EDT
    assert end == utc("2024-03-10T09:00:00Z")    # 05:00 EDT


def test_interval_inside_spring_forward_gap__never_opens() -> None:
    schedule = bh.schedule_from_settings("America/New_York", {"sun": [["02:00", "03:00"]]})

    assert bh.open_ranges(schedule, date(2024, 3, 10), date(2024, 3, 10)) == []


def test_lord_howe__half_hour_change() -> None:
    # Lord Howe Island moves its clocks by 30 minutes; 02:00 becomes 02:30 on 2024-10-06.
    schedule = bh.schedule_from_settings("Australia/Lord_Howe", {"sun": [["01:00", "05:00"]]})

    [(start, end)] = bh.open_ranges(schedule, date(2024, 10, 6), date(2024, 10, 6))

    assert end - start == timedelta(hours=3, minutes=30)


def test_apia__skipped_day_has_no_hours() -> None:
    # Samoa skipped 30 December 2011 when it crossed the date line.
    schedule = Schedule(ZoneInfo("Pacific/Apia"), ((Interval(time(9), time(17)),),) * 7)

    ranges = bh.open_ranges(schedule, date(2011, 12, 29), date(2011, 12, 31))

    assert [start.astimezone(schedule.zone).date() for start, _ in ranges] == [
        date(2011, 12, 29), date(2011, 12, 31)]


def test_ambiguous_opening__first_occurrence_counts() -> None:
    schedule = bh.schedule_from_settings("America/New_York", {"sun": [["01:30", "03:00"]]})

    [(start, end)] = bh.open_ranges(schedule, date(2024, 11, 3), date(2024, 11, 3))

    assert start == utc("2024-11-03T05:30:00Z")  # 01:30 EDT, before the clocks go back
    assert end == utc("2024-11-03T08:00:00Z")    # 03:00 EST


# --- parsing and formatting ---------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("closed", ()),
    ("all-day", (Interval(time(0), None),)),
    ("09:00-12:00, 13:00-17:00", (Interval(time(9), time(12)), Interval(time(13), time(17)))),
    ("22:00-06:00", (Interval(time(22), time(6)),)),
    ("18:00-24:00", (Interval(time(18), None),)),
])
def test_parse_day_hours__accepted(text: str, expected: tuple[Interval, ...]) -> None:
    assert bh.parse_day_hours(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("0900-1700", "expected HH:MM, e.g. 09:00"),
    ("09:00", "expected HH:MM-HH:MM"),
    ("09:00-09:00", "opens and closes at the same time"),
    ("24:00-02:00", "24:00 only closes a day"),
    ("09:00-25:00", "hours run 00-23"),
    ("09:60-10:00", "minutes 00-59"),
])
def test_parse_day_hours__rejected(text: str, message: str) -> None:
    with pytest.raises(bh.BusinessHoursError, match=message):
        bh.parse_day_hours(text)


def test_schedule_from_settings__unknown_zone() -> None:
    with pytest.raises(bh.BusinessHoursError, match="unknown time zone 'Mars/Olympus'"):
        bh.schedule_from_settings("Mars/Olympus", {})


def test_schedule_from_settings__unknown_weekday() -> None:
    with pytest.raises(bh.BusinessHoursError, match="unknown weekday"):
        bh.schedule_from_settings("UTC", {"monday": [["09:00", "17:00"]]})


def test_schedule_from_settings__malformed_pairs() -> None:
    with pytest.raises(bh.BusinessHoursError, match="mon: invalid hours"):
        bh.schedule_from_settings("UTC", {"mon": ["09:00-17:00"]})


def test_hours_to_settings__round_trip() -> None:
    week = [bh.parse_day_hours(text) for text in
            ("09:00-12:00,13:00-17:00", "all-day", "22:00-06:00", "closed", "18:00-24:00",
             "closed", "closed")]

    settings_form = bh.hours_to_settings(week)

    assert bh.schedule_from_settings("UTC", settings_form).week == tuple(week)


def test_is_open__naive_instant_rejected() -> None:
    with pytest.raises(bh.BusinessHoursError, match="has no time zone"):
        bh.is_open(new_york(), datetime(2024, 3, 11, 13, 30))


def test_format_opening__japanese() -> None:
    text = bh.format_opening(utc("2024-03-11T00:00:00Z"), ZoneInfo("Asia/Tokyo"), "ja-JP")

    assert text == "2024年3月11日（月）9:00（JST）"


def test_format_opening__zone_without_abbreviation() -> None:
    text = bh.format_opening(utc("2024-03-11T05:00:00Z"), ZoneInfo("Asia/Dubai"), "en")

    assert text == "Monday 11 March 2024, 09:00 UTC+04:00"


def test_describe_next_opening__inbox_row() -> None:
    inbox = {"business_hours_enabled": True, "time_zone": "America/New_York",
             "business_hours": WEEKDAYS_9_TO_17, "holidays": ["2024-03-11"]}

    text = bh.describe_next_opening(inbox, utc("2024-03-10T14:30:00Z"), "en")

    assert text == "Tuesday 12 March 2024, 09:00 EDT"


def test_describe_next_opening__hours_off_or_invalid() -> None:
    at = utc("2024-03-10T14:30:00Z")

    assert bh.describe_next_opening({"business_hours_enabled": False}, at, "en") == ""
    assert bh.describe_next_opening({"business_hours_enabled": True, "time_zone": "Nowhere/X",
                                     "business_hours": {}, "holidays": []}, at, "en") == ""


# --- properties -------------------------------------------------------------------------

# Zones whose rules are known to be unusual: half-hour and two-hour changes,
# changes at midnight, negative DST, a skipped day, DST suspended for Ramadan.
TRICKY_ZONES = [
    "America/New_York", "Europe/London", "Europe/Dublin", "Australia/Lord_Howe",
    "Pacific/Chatham", "Asia/Kathmandu", "America/Santiago", "America/Havana",
    "America/Sao_Paulo", "Africa/Casablanca", "Pacific/Apia", "Antarctica/Troll",
    "America/St_Johns", "Asia/Tehran", "Australia/Adelaide", "Europe/Moscow", "Asia/Gaza",
]
ALL_ZONES = sorted(available_timezones() - {"Factory", "localtime"})

zones = st.one_of(st.sampled_from(TRICKY_ZONES), st.sampled_from(ALL_ZONES))


def minute_of(moment: time | None) -> int:
    return 24 * 60 if moment is None else moment.hour * 60 + moment.minute


def clock(minute: int) -> time | None:
    return None if minute == 24 * 60 else time(minute // 60, minute % 60)


@st.composite
def intervals(draw: st.DrawFn, near: list[int] | None = None) -> Interval:
    """Draw an interval; with ``near``, its ends are often among those wall-clock minutes."""
    minutes = st.integers(0, 24 * 60)
    if near:
        minutes = st.one_of(minutes, st.sampled_from(near))
    opens = draw(minutes.filter(lambda minute: minute < 24 * 60))
    closes = draw(minutes.filter(lambda minute: minute != opens))
    return Interval(clock(opens), clock(closes))  # type: ignore[arg-type]


def wall_minutes_around(at: datetime, zone: ZoneInfo) -> list[int]:
    """Return wall-clock minutes near ``at`` read with the offsets before and after it.

    Read with the earlier offset, minutes after a spring-forward change are
    times the clocks skip; read with the later one, minutes before a
    fall-back change are times they repeat.
    """
    offsets = {(at + hours).astimezone(zone).utcoffset()
               for hours in (timedelta(hours=-12), timedelta(hours=12))}
    found = set()
    for offset in offsets:
        assert offset is not None
        for step in range(-18, 19):
            wall = (at + timedelta(minutes=10 * step) + offset).replace(tzinfo=None)
            found.add(wall.hour * 60 + wall.minute - wall.minute % 5)
    return sorted(found)


@cache
def transitions(zone_name: str, year: int) -> tuple[datetime, ...]:
    """Return the instants in ``year`` at which ``zone_name`` changes its UTC offset."""
    zone = ZoneInfo(zone_name)
    found = []
    instant = datetime(year, 1, 1, tzinfo=UTC)
    step = timedelta(hours=6)
    while instant.year == year:
        after = instant + step
        if instant.astimezone(zone).utcoffset() != after.astimezone(zone).utcoffset():
            low, high = instant, after
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
        instant = after
    return tuple(found)


@st.composite
def instants(draw: st.DrawFn, zone_name: str) -> datetime:
    """Draw an instant, half of the time within a few hours of one of the zone's changes."""
    year = draw(st.integers(1975, 2037))
    changes = transitions(zone_name, year)
    near_change = draw(st.booleans())
    if changes and near_change:
        change = draw(st.sampled_from(changes))
        return change + timedelta(seconds=draw(st.integers(-6 * 3600, 6 * 3600)))
    start = datetime(year, 1, 1, tzinfo=UTC)
    return start + timedelta(seconds=draw(st.integers(0, 365 * 86400)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Schedule, datetime]:
    zone_name = draw(zones)
    at = draw(instants(zone_name))
    near = wall_minutes_around(at, ZoneInfo(zone_name))
    week = tuple(tuple(draw(st.lists(intervals(near), max_size=3))) for _ in range(7))
    local_day = at.astimezone(ZoneInfo(zone_name)).date()
    holidays = frozenset(local_day + timedelta(days=offset)
                         for offset in draw(st.lists(st.integers(-2, 9), max_size=3)))
    return Schedule(ZoneInfo(zone_name), week, holidays), at


def wall_clock_open(schedule: Schedule, at: datetime) -> bool:
    """Return whether the clock on the office wall shows a time inside an interval."""
    local = at.astimezone(schedule.zone)
    today, now = local.date(), local.time().replace(tzinfo=None)
    for interval in schedule.intervals_of(today):
        if interval.closes is None or interval.crosses_midnight:
            if now >= interval.opens:
                return True
        elif interval.opens <= now < interval.closes:
            return True

    if today in schedule.holidays:
        return False
    yesterday = today - timedelta(days=1)
    return any(interval.crosses_midnight and interval.closes is not None
               and now < interval.closes for interval in schedule.intervals_of(yesterday))


def is_unambiguous(at: datetime, zone: ZoneInfo) -> bool:
    local = at.astimezone(zone)
    other = local.replace(fold=1 - local.fold)
    return other.astimezone(UTC) == at


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(cases())
def test_is_open__matches_wall_clock_when_unambiguous(case: tuple[Schedule, datetime]) -> None:
    schedule, at = case
    assume(is_unambiguous(at, schedule.zone))

    assert bh.is_open(schedule, at) == wall_clock_open(schedule, at)


@PROPERTY_SETTINGS
@given(cases())
def test_next_opening__is_open_and_nothing_opens_before(case: tuple[Schedule, datetime]) -> None:
    schedule, at = case
    opening = bh.next_opening(schedule, at, horizon_days=30)
    assume(opening is not None)
    assert opening is not None

    assert opening >= at
    assert bh.is_open(schedule, opening)
    if opening > at:
        assert not bh.is_open(schedule, at)
        assert not bh.is_open(schedule, opening - timedelta(microseconds=1))
        # Every change of the zone in between, and evenly spaced points, are closed.
        points = [at + (opening - at) * step / 16 for step in range(16)]
        points += [change for year in {at.year, opening.year}
                   for change in transitions(schedule.zone.key, year) if at <= change < opening]
        for point in points:
            assert not bh.is_open(schedule, point)


@PROPERTY_SETTINGS
@given(cases(), st.integers(1, 48 * 3600))
def test_next_opening__same_for_instants_of_one_closed_period(
        case: tuple[Schedule, datetime], later_seconds: int) -> None:
    schedule, at = case
    later = at + timedelta(seconds=later_seconds)
    opening = bh.next_opening(schedule, at, horizon_days=30)
    assume(opening is not None and later < opening)

    assert bh.next_opening(schedule, later, horizon_days=30) == opening


@PROPERTY_SETTINGS
@given(cases())
def test_open_ranges__sorted_disjoint_and_nonempty(case: tuple[Schedule, datetime]) -> None:
    schedule, at = case
    day = at.astimezone(schedule.zone).date()

    ranges = bh.open_ranges(schedule, day - timedelta(days=3), day + timedelta(days=3))

    for start, end in ranges:
        assert start < end
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end < start


@PROPERTY_SETTINGS
@given(cases(), intervals())
def test_interval_length__nominal_away_from_changes(case: tuple[Schedule, datetime],
                                                    interval: Interval) -> None:
    schedule, at = case
    schedule = Schedule(schedule.zone, ((interval,),) * 7)
    day = at.astimezone(schedule.zone).date()
    nearby = [change for year in {day.year - 1, day.year, day.year + 1}
              for change in transitions(schedule.zone.key, year)
              if abs(change - at) < timedelta(days=3)]
    assume(not nearby)

    [(start, end)] = bh.open_ranges(schedule, day, day)

    opens, closes = minute_of(interval.opens), minute_of(interval.closes)
    nominal_minutes = closes - opens if closes > opens else closes + 24 * 60 - opens
    assert end - start == timedelta(minutes=nominal_minutes)
