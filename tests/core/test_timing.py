"""The machine's usual copy bandwidth, against which a busy benchmark run shows."""

from __future__ import annotations

from diagonalwise.timing import BANDWIDTH_HISTORY, usual_copy_bandwidth


def test_the_usual_copy_bandwidth_is_the_median_of_recent_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAGONALWISE_CACHE_DIR", str(tmp_path))
    (tmp_path / "copy-bandwidth.json").write_text('{"other device": 5.0}')  # kept as it is
    assert [usual_copy_bandwidth("cpu", v) for v in (40.0, 70.0, 38.0, 42.0)] == \
        [40.0, 55.0, 40.0, 41.0]
    for _ in range(BANDWIDTH_HISTORY):
        usual = usual_copy_bandwidth("cpu", 10.0)
    assert usual == 10.0  # only the last runs count
    assert '"other device": 5.0' in (tmp_path / "copy-bandwidth.json").read_text()
