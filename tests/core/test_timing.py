"""Timing: the machine's usual copy bandwidth, against which a busy run shows; fair interleaving."""

from __future__ import annotations

import time

from diagonalwise.timing import (
    BANDWIDTH_HISTORY,
    MAX_ROUNDS_PER_REPEAT,
    measure_interleaved,
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
