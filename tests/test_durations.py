from __future__ import annotations

import pytest

from lrtrain.durations import Duration, Timeline, parse_duration


@pytest.mark.parametrize(
    "text,duration",
    [(5, Duration(5, "ep")), ("5", Duration(5, "ep")), ("5ep", Duration(5, "ep")), ("2.5ep", Duration(2.5, "ep")),
     ("500steps", Duration(500, "steps")), ("1step", Duration(1, "steps")), ("10%", Duration(10, "%"))],
)
def test_parse(text, duration):
    assert parse_duration(text) == duration


@pytest.mark.parametrize("bad", ["", "ep", "5 weeks", "-3ep", "2.5steps", "150%", True])
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_timeline_converts_every_unit_to_steps():
    t = Timeline(steps_per_epoch=45, total_steps=900)
    assert t.steps(2) == 90 and t.steps("2ep") == 90 and t.steps("0.5ep") == 22
    assert t.steps("100steps") == 100 and t.steps("10%") == 90 and t.steps("100%") == 900
