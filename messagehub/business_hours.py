"""Business hours of an inbox: whether it is open at an instant, and when it next opens.

The assign service calls :func:`is_open` with a mail's arrival time to
choose between the greeting and the out-of-hours note, and
:func:`next_opening` to tell apart the closed periods in which a note was
already sent. The outbound service calls :func:`describe_next_opening` to
fill the note's ``{next_opening}``. ``messagehub.inboxes`` validates what an
operator enters through :func:`schedule_from_settings` and
:func:`parse_day_hours`. Nothing here does IO.

Hours are wall-clock times in the inbox's IANA time zone, converted with
zoneinfo at each instant, so 09:00 means 09:00 local time on both sides of
a daylight-saving change, and no fixed UTC offset is ever stored. Each
weekday has any number of intervals. An interval may end at midnight
("24:00") or run past it into the next day ("22:00-06:00"). A holiday is
closed for the whole local date. An interval that starts the evening
before a holiday ends at its midnight.

Each interval of a date becomes a range of instants. It starts at the
first instant at which the wall clock shows the opening time, and it ends
at the first instant at which it shows the closing time. A time that a
spring-forward change skips is reached at the change itself, so
"02:30-05:00" on that day opens when the clocks jump from 02:00 to 03:00.
A time that a fall-back change repeats counts at its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "WEEKDAYS",
    "BusinessHoursError",
    "Interval",
    "Schedule",
    "describe_next_opening",
    "format_opening",
    "hours_to_settings",
    "is_open",
    "next_opening",
    "open_ranges",
    "parse_day_hours",
    "schedule_from_settings",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# How far next_opening looks ahead. A year and a bit covers a schedule open
# one day a year and a list of holidays that closes a whole year.
SEARCH_HORIZON_DAYS = 400

_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_ONE_DAY = timedelta(days=1)

_JA_WEEKDAYS = ("月", "火", "水", "木", "金", "土", "日")
_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")


class BusinessHoursError(ValueError):
    """Business-hours settings are invalid; the message names the value and the fix."""


@dataclass(frozen=True)
class Interval:
    """One opening of a weekday, in wall-clock time.

    ``closes`` is None for midnight at the end of the day ("24:00"). A
    ``closes`` at or before ``opens`` means the interval ends on the next
    day, so "22:00-06:00" is a night shift and "18:00-00:00" ends at midnight.
    """

    opens: time
    closes: time | None

    @property
    def crosses_midnight(self) -> bool:
        return self.closes is not None and self.closes <= self.opens

    def __str__(self) -> str:
        closes = "24:00" if self.closes is None else self.closes.strftime("%H:%M")
        return f"{self.opens.strftime('%H:%M')}-{closes}"


@dataclass(frozen=True)
class Schedule:
    """The opening hours of one inbox: its zone, intervals per weekday, holidays."""

    zone: ZoneInfo
    week: tuple[tuple[Interval, ...], ...]
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if len(self.week) != 7:
            raise BusinessHoursError(f"a week has 7 days, not {len(self.week)}")

    def intervals_of(self, day: date) -> tuple[Interval, ...]:
        """Return the intervals that open on the local date ``day``."""
        if day in self.holidays:
            return ()
        return self.week[day.weekday()]


# --- reading and writing the settings --------------------------------------


def parse_opening(text: str) -> time:
    """Parse an opening time "HH:MM"."""
    hours, minutes = _parse_clock(text, closing=False)
    if hours == 24:
        raise BusinessHoursError(f"invalid opening time {text!r}: 24:00 only closes a day")
    return time(hours, minutes)


def parse_closing(text: str) -> time | None:
    """Parse a closing time "HH:MM". "24:00", midnight at the end of the day, gives None."""
    hours, minutes = _parse_clock(text, closing=True)
    return None if hours == 24 else time(hours, minutes)


def _parse_clock(text: str, *, closing: bool) -> tuple[int, int]:
    match = _TIME.match(text.strip())
    if match is None:
        raise BusinessHoursError(f"invalid time {text!r}: expected HH:MM, e.g. 09:00")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if (hours, minutes) == (24, 0):
        return hours, minutes
    if hours > 23 or minutes > 59:
        raise BusinessHoursError(f"invalid time {text!r}: hours run 00-23 and minutes 00-59"
                                 + (", or 24:00 for midnight" if closing else ""))
    return hours, minutes


def parse_interval(opens: str, closes: str) -> Interval:
    """Return the interval from two "HH:MM" times; reject an interval of no length."""
    interval = Interval(parse_opening(opens), parse_closing(closes))
    if interval.closes == interval.opens:
        raise BusinessHoursError(
            f"invalid interval {opens}-{closes}: it opens and closes at the same time. "
            "Use 00:00-24:00 for a day open around the clock")
    return interval


def parse_day_hours(text: str) -> tuple[Interval, ...]:
    """Parse one weekday as an operator types it.

    "closed", "all-day" (open around the clock), or intervals separated by
    commas: "09:00-12:00,13:00-17:00", "22:00-06:00", "18:00-24:00".
    """
    spec = text.strip().lower()
    if spec in ("closed", "none", ""):
        return ()
    if spec in ("all-day", "all_day", "open", "24h"):
        return (Interval(time(0, 0), None),)

    intervals = []
    for part in spec.split(","):
        opens, separator, closes = part.strip().partition("-")
        if not separator:
            raise BusinessHoursError(
                f"invalid interval {part.strip()!r}: expected HH:MM-HH:MM, e.g. 09:00-17:00")
        intervals.append(parse_interval(opens, closes))
    return tuple(intervals)


def load_zone(name: str) -> ZoneInfo:
    """Return the IANA zone ``name``; raise BusinessHoursError when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BusinessHoursError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin") from None


def schedule_from_settings(zone: str, hours: Mapping[str, Any],
                           holidays: Iterable[str | date] = ()) -> Schedule:
    """Build a Schedule from the stored settings of an inbox.

    ``hours`` maps "mon" … "sun" to a list of ``[opens, closes]`` pairs, and a
    missing weekday is closed. ``holidays`` are dates or "YYYY-MM-DD" strings.
    """
    unknown = set(hours) - set(WEEKDAYS)
    if unknown:
        raise BusinessHoursError(f"unknown weekday(s) {sorted(unknown)}: use {', '.join(WEEKDAYS)}")

    week = []
    for weekday in WEEKDAYS:
        pairs = hours.get(weekday) or []
        try:
            week.append(tuple(parse_interval(str(opens), str(closes)) for opens, closes in pairs))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, BusinessHoursError):
                raise BusinessHoursError(f"{weekday}: {exc}") from None
            raise BusinessHoursError(
                f"{weekday}: invalid hours {pairs!r}: expected a list of [opens, closes] "
                "pairs") from None
    return Schedule(load_zone(zone), tuple(week), frozenset(_parse_date(d) for d in holidays))


def hours_to_settings(week: Iterable[Iterable[Interval]]) -> dict[str, list[list[str]]]:
    """Return the stored form of a week of intervals, the inverse of schedule_from_settings."""
    return {weekday: [str(interval).split("-") for interval in intervals]
            for weekday, intervals in zip(WEEKDAYS, week, strict=True)}


def _parse_date(value: str | date) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BusinessHoursError(f"invalid holiday {value!r}: expected YYYY-MM-DD") from None


# --- the arithmetic ---------------------------------------------------------


def first_instant_showing(wall: datetime, zone: ZoneInfo) -> datetime:
    """Return the first UTC instant at which the clocks of ``zone`` show ``wall`` or later.

    ``wall`` is naive. For a repeated wall time that is its first
    occurrence. For a skipped one it is the instant of the change that
    skips it.
    """
    earlier = wall.replace(tzinfo=zone, fold=0)
    later = wall.replace(tzinfo=zone, fold=1)
    candidates = [candidate.astimezone(timezone.utc) for candidate in (earlier, later)]
    existing = [instant for instant in candidates if _wall_of(instant, zone) == wall]
    if existing:
        return min(existing)

    # Skipped: the change lies between the two readings of the wall time.
    return _find_change(min(candidates), max(candidates), wall, zone)


def _find_change(low: datetime, high: datetime, wall: datetime, zone: ZoneInfo) -> datetime:
    """Return the first instant in (low, high] whose wall time is at least ``wall``."""
    while high - low > timedelta(microseconds=1):
        middle = low + (high - low) / 2
        if _wall_of(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return high


def _wall_of(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _ranges_of_date(schedule: Schedule, day: date) -> Iterator[tuple[datetime, datetime]]:
    """Yield the instant ranges of the intervals that open on the local date ``day``."""
    for interval in schedule.intervals_of(day):
        start = first_instant_showing(datetime.combine(day, interval.opens), schedule.zone)
        if interval.closes is None or interval.crosses_midnight:
            end_day = day + _ONE_DAY
            end_wall = datetime.combine(end_day, interval.closes or time(0, 0))
        else:
            end_day = day
            end_wall = datetime.combine(day, interval.closes)

        # A holiday is closed from its first minute, whatever started before.
        if end_day != day and end_day in schedule.holidays:
            end_wall = datetime.combine(end_day, time(0, 0))
        end = first_instant_showing(end_wall, schedule.zone)
        if end > start:
            yield start, end


def open_ranges(schedule: Schedule, first_day: date,
                last_day: date) -> list[tuple[datetime, datetime]]:
    """Return the merged UTC ranges ``[start, end)`` of the intervals opening on these dates."""
    ranges: list[tuple[datetime, datetime]] = []
    day = first_day
    while day <= last_day:
        ranges.extend(_ranges_of_date(schedule, day))
        day += _ONE_DAY
    ranges.sort()

    merged: list[tuple[datetime, datetime]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _local_date(at: datetime, zone: ZoneInfo) -> date:
    if at.tzinfo is None:
        raise BusinessHoursError(f"instant {at.isoformat()} has no time zone: pass an aware "
                                 "datetime, e.g. in UTC")
    return at.astimezone(zone).date()


def is_open(schedule: Schedule, at: datetime) -> bool:
    """Return True when the inbox is open at the aware instant ``at``."""
    today = _local_date(at, schedule.zone)
    # Intervals of the two days before can still be running: night shifts
    # cross midnight, and a fall-back change can repeat the last hour.
    ranges = open_ranges(schedule, today - 2 * _ONE_DAY, today + _ONE_DAY)
    return any(start <= at < end for start, end in ranges)


def next_opening(schedule: Schedule, at: datetime, *,
                 horizon_days: int = SEARCH_HORIZON_DAYS) -> datetime | None:
    """Return the first instant at or after ``at`` when the inbox is open, in UTC.

    That is ``at`` itself when the inbox is open then. Returns None when it
    does not open within ``horizon_days``. Two instants of one closed
    period have the same next opening, so it also names that period.
    """
    today = _local_date(at, schedule.zone)
    first_day = today - 2 * _ONE_DAY
    last_day = today + timedelta(days=horizon_days)
    window = timedelta(days=7)

    while first_day <= last_day:
        window_end = min(first_day + window, last_day)
        for start, end in open_ranges(schedule, first_day, window_end):
            if start <= at < end:
                return at.astimezone(timezone.utc)
            if start > at:
                return start
        first_day = window_end + _ONE_DAY
    return None


# --- telling the customer ---------------------------------------------------


def format_opening(instant: datetime, zone: ZoneInfo, locale: str) -> str:
    """Return ``instant`` as a customer reads it in ``zone``.

    English: "Monday 11 March 2024, 09:00 EDT"; Japanese:
    "2024年3月11日（月）9:00（JST）". Zones without an abbreviation show
    their offset, as in "UTC+04:00".
    """
    local = instant.astimezone(zone)
    zone_name = local.tzname() or ""
    if not zone_name or zone_name[0] in "+-":
        zone_name = "UTC" + local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]

    if locale.replace("_", "-").split("-")[0].lower() == "ja":
        return (f"{local.year}年{local.month}月{local.day}日（{_JA_WEEKDAYS[local.weekday()]}）"
                f"{local.hour}:{local.minute:02d}（{zone_name}）")
    return (f"{_EN_WEEKDAYS[local.weekday()]} {local.day} {_EN_MONTHS[local.month - 1]} "
            f"{local.year}, {local.hour:02d}:{local.minute:02d} {zone_name}")


def describe_next_opening(inbox: Mapping[str, Any], at: datetime, locale: str) -> str:
    """Return the next opening after ``at`` for an inbox row, or "" when there is none.

    ``inbox`` is the inbox's row as a dict (or its JSON): ``business_hours_enabled``,
    ``time_zone``, ``business_hours`` and ``holidays``. Invalid settings
    give "" too, so the note leaves out the sentence instead of failing.
    """
    if not inbox.get("business_hours_enabled"):
        return ""
    try:
        schedule = schedule_from_settings(inbox["time_zone"], inbox["business_hours"] or {},
                                          inbox.get("holidays") or ())
    except BusinessHoursError:
        return ""
    opening = next_opening(schedule, at)
    if opening is None:
        return ""
    return format_opening(opening, schedule.zone, locale)
