"""Progress bars replayed from a job's recorded events show the rate the job had, not the
rate at which the events arrived."""

from __future__ import annotations

import io
import re

from keras_jobs.events import Event
from keras_jobs.progress import EpochBars


def _at(second: float) -> str:
    return f"2026-01-01T00:00:{second:06.3f}+00:00"


def _final_rates(text: str) -> list[float]:
    """The last rate each bar printed (tqdm ends each bar's final line with a newline)."""
    finals = [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.strip()]
    return [float(m.group(1)) for line in finals
            if (m := re.search(r"([0-9.]+)step/s", line))]


def test_replayed_epochs_show_the_recorded_rate() -> None:
    # Two epochs of 10 steps, 5 s each by the job's clock, replayed in a few milliseconds.
    out = io.StringIO()
    bars = EpochBars(2, 10, file=out)
    events = [Event("status", {"status": "running", "time": _at(0)}),
              Event("progress", {"epoch": 0, "batch": 4, "steps": 10, "time": _at(2)}),
              Event("epoch", {"epoch": 0, "logs": {"loss": 1.0}, "time": _at(5)}),
              Event("progress", {"epoch": 1, "batch": 5, "steps": 10, "time": _at(7.5)}),
              Event("epoch", {"epoch": 1, "logs": {"loss": 0.5}, "time": _at(10)}),
              Event("status", {"status": "succeeded", "time": _at(10.1)})]
    for event in events:
        bars.handle(event)
    text = out.getvalue()
    rates = _final_rates(text)
    assert len(rates) == 2, text
    assert all(abs(rate - 2.0) < 0.1 for rate in rates), text  # 10 steps in 5 s
    assert "00:05" in text, text


def test_joining_mid_epoch_counts_the_rate_from_the_first_event_seen() -> None:
    out = io.StringIO()
    bars = EpochBars(1, 10, file=out)
    bars.handle(Event("progress", {"epoch": 0, "batch": 6, "steps": 10, "time": _at(30)}))
    bars.handle(Event("epoch", {"epoch": 0, "logs": {"loss": 1.0}, "time": _at(32)}))
    rates = _final_rates(out.getvalue())
    assert rates and abs(rates[-1] - 2.0) < 0.1, out.getvalue()  # 4 steps in 2 s


def test_events_without_a_time_still_draw_bars() -> None:
    out = io.StringIO()
    bars = EpochBars(1, 10, file=out)
    bars.handle(Event("progress", {"epoch": 0, "batch": 3, "steps": 10}))
    bars.handle(Event("epoch", {"epoch": 0, "logs": {"loss": 1.0}}))
    assert "10/10" in out.getvalue()
