"""Durations in progress lines (genbrain.progress): the trainer's and the regressor's ETAs."""

import math

from genbrain.progress import hms


def test_hms_writes_hours_minutes_and_seconds_rounded_and_unknown_as_a_question_mark():
    assert hms(0) == "0:00:00"
    assert hms(3725.4) == "1:02:05"
    assert hms(59.6) == "0:01:00"  # rounded to the second, carried into the minutes
    assert hms(90061) == "25:01:01"  # hours are not wrapped into days
    assert hms(math.inf) == "?" and hms(math.nan) == "?"
