"""Timing: the machine's usual copy bandwidth, against which a busy run shows; fair interleaving."""

from __future__ import annotations

import time

from diagonalwise.timing import (
    BANDWIDTH_HISTORY,
    MAX_ROUNDS_PER_REPEAT,
    SPEEDUP_CONFIDENCE,
    Timing,
    measure_interleaved,
    paired_speedup,
    speedup_interval,
    usual_copy_bandwidth,
)


def test_the_usual_copy_bandwidth_is_the_median_of_recent_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAGONALWISE_CACHE_DIR", str(tmp_path))
    (tmp_path / "copy-bandwidth.json").write_text('{"other device": 5.0}')  # kept as it is
    assert [usual_copy_bandwidth("cpu", v) for v in (40.0, 70.0, 38.0, 42.0)] == \
        [40.0, 55.0, 40.0, 41.0]
    for _ in range(BANDWIDTH_HISTORY):
        usual = usual_copy_bandwidth("cpu", 10.0)
    assert usual == 10.0  # only the last runs count
    assert '"other device": 5.0' in (tmp_path / "copy-bandwidth.json").read_text()


def test_interleaved_rounds_change_who_runs_before_whom():
    """A rotated order keeps each function's predecessor, whose cache state it inherits."""
    calls = []
    names = ["native", "light", "heavy", "other"]
    timings = measure_interleaved({name: lambda name=name: calls.append(name) for name in names},
                                  "cpu", warmup=1, repeats=6)
    assert calls[:4] == names and all(len(t.samples) == 6 for t in timings.values())
    rounds = [calls[4 + 4 * r:8 + 4 * r] for r in range(6)]
    assert all(sorted(order) == sorted(names) for order in rounds)
    predecessors = {name: set() for name in names}
    for before, after in zip(calls[4:], calls[5:]):
        predecessors[after].add(before)
    assert all(len(p) >= 2 for p in predecessors.values())
    # the second round of each pair reverses the first: every position evened out per pair
    assert all(rounds[r + 1] == rounds[r][::-1] for r in range(0, 6, 2))


def test_two_interleaved_functions_take_turns_going_first():
    calls = []
    measure_interleaved({name: lambda name=name: calls.append(name) for name in "ab"}, "cpu",
                        warmup=0, repeats=4)
    assert [calls[i] for i in range(0, 8, 2)].count("a") == 2


def test_successive_interleaved_measurements_draw_new_orders():
    """Reseeded per call, each place in the list met the same predecessors in every call."""
    names = ["native", "light", "heavy", "other", "more"]
    calls = []
    functions = {name: lambda name=name: calls.append(name) for name in names}
    for _ in range(4):
        measure_interleaved(functions, "cpu", warmup=0, repeats=1)
    orders = {tuple(calls[i:i + len(names)]) for i in range(0, len(calls), len(names))}
    assert len(orders) > 1


def test_short_measurements_add_rounds_up_to_min_seconds_within_a_cap():
    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    timings = measure_interleaved({"a": sleeper(0.01), "b": sleeper(0.015)}, "cpu", warmup=0,
                                  repeats=3, min_seconds=0.2)
    rounds = len(timings["a"].samples)
    assert rounds == len(timings["b"].samples)
    assert 3 < rounds < 3 * MAX_ROUNDS_PER_REPEAT  # 0.025 s or more a round: 8 rounds or fewer
    assert sum(timings["a"].samples + timings["b"].samples) >= 0.2
    capped = measure_interleaved({"a": sleeper(0.001)}, "cpu", warmup=0, repeats=2,
                                 min_seconds=60.0)
    assert len(capped["a"].samples) == 2 * MAX_ROUNDS_PER_REPEAT
    unbounded = measure_interleaved({"a": sleeper(0.0)}, "cpu", warmup=0, repeats=3)
    assert len(unbounded["a"].samples) == 3  # min_seconds 0: no rounds added


def test_speedup_intervals_pair_each_rounds_times():
    """A slow spell of the machine slows both runs of its round: paired, the ratios stay put."""
    native = Timing([10.0, 20.0, 30.0, 40.0, 50.0])
    tuned = Timing([5.0, 10.0, 20.0, 16.0, 25.0])  # per round 2, 2, 1.5, 2.5, 2
    assert speedup_interval(native, tuned) == (1.5, 2.5)  # 5 rounds: smallest to largest, 94%
    assert paired_speedup(native, tuned) == 2.0  # the medians' ratio would be 30 / 16
    drifting = Timing([float(v) for v in range(1, 12)])
    assert speedup_interval(Timing([2 * v for v in drifting.samples]), drifting) == (2.0, 2.0)


def test_speedup_intervals_take_the_order_statistics_that_keep_ninety_percent():
    ratios = [1.0 + v / 100 for v in (7, 3, 10, 1, 5, 11, 2, 9, 4, 8, 6)]  # 11 rounds, shuffled
    # 3rd and 9th of 11: 1 - 2 * (1 + 11 + 55) / 2048 = 93%; the 4th and 8th would cover 77%
    assert speedup_interval(Timing(ratios), Timing([1.0] * 11)) == (1.03, 1.09)
    assert SPEEDUP_CONFIDENCE == 0.9
    assert speedup_interval(Timing([2.0] * 4), Timing([1.0] * 4)) is None  # 4 rounds: 88% at most
