"""The exactly-once ledger of a pair folder (core/pair_ledger.py) and the loop that hands items to workers
(scripts/pair_workers.collect): keys, one write per key, recovery from a writer killed mid-pair, the one-writer
lock, and an item whose worker dies going to another worker."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from core.pair_ledger import (LOCK_FILE, LOG_FILE, LedgerError, PairLedger, filter_reasons, item_key,
                              partial_files)
from core.student_data import PairFilter, list_pairs, png_bytes, read_pair_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from scripts.pair_workers import NoWorkersLeft, collect  # noqa: E402


def _pngs(seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return png_bytes(torch.rand(3, size, size, generator=g)), png_bytes(torch.rand(3, size, size, generator=g))


def test_item_key_covers_input_edit_and_settings():
    base = item_key({"sha256": "ab"}, {"source": "cat", "target": "dog"}, {"steps": 50, "size": 512})
    assert base == item_key({"sha256": "ab"}, {"target": "dog", "source": "cat"}, {"size": 512, "steps": 50})
    changed = [item_key({"sha256": "ac"}, {"source": "cat", "target": "dog"}, {"steps": 50, "size": 512}),
               item_key({"sha256": "ab"}, {"source": "cat", "target": "fox"}, {"steps": 50, "size": 512}),
               item_key({"sha256": "ab"}, {"source": "cat", "target": "dog"}, {"steps": 49, "size": 512})]
    assert len({base, *changed}) == 4


def test_each_key_is_written_once_and_a_rerun_skips_written_and_filtered(tmp_path):
    folder = str(tmp_path / "pairs")
    with PairLedger(folder) as ledger:
        first = ledger.write("k1", *_pngs(1), (8, 8), {"edit": "a -> b"})
        again = ledger.write("k1", *_pngs(2), (8, 8), {"edit": "a -> b"})
        ledger.write("k2", *_pngs(3), (8, 8), {"edit": "a -> b"})
        ledger.filtered("k3", "c.png", ["structure 0.1 < 0.3"], {"structure_score": 0.1})
        ledger.failed("k4", "d.png", "out of memory")
    assert first == again == 1
    assert [i for i, _, _ in list_pairs(folder)] == [1, 2]
    assert [r["key"] for r in read_pair_lines(folder)] == ["k1", "k2"]
    with PairLedger(folder) as ledger:
        assert ledger.done_keys() == {"k1", "k2", "k3"}  # k4 failed: tried again
    assert not os.path.exists(os.path.join(folder, LOCK_FILE))


def test_filter_reasons_match_the_save_pairs_rule():
    keep_all = PairFilter()
    assert filter_reasons(keep_all, -1.0, 0.0) == []
    strict = PairFilter(min_structure=0.3, min_change=0.01)
    assert filter_reasons(strict, 0.3, 0.01) == []
    assert len(filter_reasons(strict, 0.29, 0.009)) == 2


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import torch
    import core.student_data as sd
    from core.pair_ledger import PairLedger
    calls = []
    real = sd._publish_exclusive
    def publish(data, final):
        calls.append(final)
        real(data, final)
        if len(calls) == {kill_after}:  # killed with the pair half written (or whole, but its line unwritten)
            os.kill(os.getpid(), signal.SIGKILL)
    sd._publish_exclusive = publish
    with PairLedger({folder!r}) as ledger:
        for i in range(3):
            g = torch.Generator().manual_seed(i)
            ledger.write(f"k{{i}}", sd.png_bytes(torch.rand(3, 8, 8, generator=g)),
                         sd.png_bytes(torch.rand(3, 8, 8, generator=g)), (8, 8), {{"edit": "a -> b"}})
""")


@pytest.mark.parametrize("kill_after, finished, undone", [(3, 0, 1), (4, 1, 0)])
def test_a_writer_killed_mid_pair_leaves_nothing_half_done(tmp_path, kill_after, finished, undone):
    """SIGKILL after the 3rd file (pair 2's input only) or the 4th (pair 2 whole, its pairs.jsonl line missing):
    the next open undoes the half pair or finishes the whole one, so the folder holds each key once, complete."""
    folder = str(tmp_path / "pairs")
    script = _KILLED_WRITER.format(repo=REPO, folder=folder, kill_after=kill_after)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    assert os.path.exists(os.path.join(folder, LOCK_FILE))  # the dead run's lock is left behind
    with PairLedger(folder) as ledger:  # same machine, dead pid: the stale lock is taken over
        assert ledger.recovered["finished"] == finished and ledger.recovered["undone"] == undone
        assert partial_files(folder) == []
        assert set(ledger.written_keys()) == ({"k0", "k1"} if finished else {"k0"})
        ledger.write("k1", *_pngs(11), (8, 8), {"edit": "a -> b"})
        ledger.write("k2", *_pngs(12), (8, 8), {"edit": "a -> b"})
    keys = [r["key"] for r in read_pair_lines(folder)]
    assert sorted(keys) == ["k0", "k1", "k2"]
    assert len(list_pairs(folder)) == 3 and partial_files(folder) == []
    assert not [f for sub in ("input", "edited") for f in os.listdir(os.path.join(folder, sub)) if f.endswith(".tmp")]


def test_a_live_writer_locks_the_folder(tmp_path):
    folder = str(tmp_path / "pairs")
    with PairLedger(folder):
        with pytest.raises(LedgerError, match=f"pid {os.getpid()}.*delete"):
            PairLedger(folder).open()


def test_journal_lines_cut_short_are_skipped(tmp_path):
    folder = str(tmp_path / "pairs")
    with PairLedger(folder) as ledger:
        ledger.filtered("k1", "a.png", ["change 0 < 0.01"], {"change_score": 0.0})
    with open(os.path.join(folder, LOG_FILE), "a", encoding="utf-8") as f:
        f.write('{"event": "filtered", "key": "k2"')  # a crash mid-line
    with PairLedger(folder) as ledger:
        assert ledger.done_keys() == {"k1"}


class _Handle:
    def __init__(self, outcome):
        self.outcome = outcome


class _ScriptedPool:
    """Workers whose outcomes are scripted per (slot, item): the loop's own logic, no ComfyUI."""

    kind = "scripted"

    def __init__(self, deaths, restarts):
        self.deaths, self.restarts = deaths, restarts  # deaths: {(slot or "any", seed)} that kill the worker
        self.replaced, self.seen = [], []

    def submit(self, slot, item):
        self.seen.append((slot, item["seed"]))
        died = ("any", item["seed"]) in self.deaths
        if (slot, item["seed"]) in self.deaths:  # a one-off death (the next worker on this item lives)
            self.deaths.discard((slot, item["seed"]))
            died = True
        return _Handle(("died", "killed") if died else ("ok", {"seed": item["seed"]}))

    def wait(self, handles, timeout):
        return [(h, h.outcome) for h in handles[:1]]

    def replace(self, slot, reason):
        self.replaced.append(slot)
        if self.restarts <= 0:
            return False
        self.restarts -= 1
        return True


def _items(n):
    return [{"key": f"k{i}", "label": f"seed {i}", "seed": i} for i in range(n)]


def test_an_item_whose_worker_dies_is_done_by_another_exactly_once():
    pool = _ScriptedPool(deaths={(1, 1)}, restarts=1)
    results, failures = [], []
    collect(_items(5), pool, [0, 1], lambda item, r: results.append(item["seed"]),
            lambda item, why: failures.append(item["seed"]))
    assert sorted(results) == [0, 1, 2, 3, 4] and failures == []
    assert pool.replaced == [1]
    assert [s for _, s in pool.seen].count(1) == 2  # item 1 ran twice (once on the dying worker), written once


def test_an_item_that_kills_every_worker_is_recorded_as_failed():
    pool = _ScriptedPool(deaths={("any", 2)}, restarts=10)
    results, failures = [], []
    collect(_items(4), pool, [0, 1], lambda item, r: results.append(item["seed"]),
            lambda item, why: failures.append((item["seed"], why)), max_attempts=3)
    assert sorted(results) == [0, 1, 3]
    assert [s for s, _ in failures] == [2] and "died 3 times" in failures[0][1]


def test_no_worker_left_stops_with_the_items_not_done():
    pool = _ScriptedPool(deaths={("any", 0), ("any", 1)}, restarts=0)
    with pytest.raises(NoWorkersLeft, match="rerun"):
        collect(_items(4), pool, [0, 1], lambda item, r: None, lambda item, why: None)


def test_items_are_prepared_when_handed_out_not_all_at_once():
    """collect_pairs reads each photo when a worker takes it: the loop prepares an item at submission only (and
    again when its worker died), so the items held prepared are the ones in flight."""
    pool = _ScriptedPool(deaths={(0, 2)}, restarts=1)
    prepared, results = [], []
    outstanding = []

    def prepare(item):
        prepared.append(item["seed"])
        outstanding.append(len(prepared) - len(results))
        return dict(item, payload=b"x")

    collect(_items(6), pool, [0, 1], lambda item, r: results.append(item["seed"]), lambda item, why: None,
            prepare=prepare)
    assert sorted(results) == list(range(6))
    assert sorted(prepared) == [0, 1, 2, 2, 3, 4, 5]  # item 2 prepared again for the worker that replaced the dead one
    assert max(outstanding) <= 3  # two workers' items, plus the one being handed out
