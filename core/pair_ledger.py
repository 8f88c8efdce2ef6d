"""Exactly-once pair collection into a student's pair folder (core.student_data's format).

A collection run turns a list of work items (a photo, or a seed for a generated image) into pairs. Each item has a
key derived from everything that decides its result: its input (the photo's content hash, or the seed and prompt),
the edit and the editor's settings (`item_key`). The ledger records, in the pair folder:

    pairs.jsonl         the written pairs, as before, each with its item's "key"
    collect_log.jsonl   the run's journal: "claim" (index + the pair's line) before a pair's files are created,
                        "filtered" (the scores that dropped it), "failed" (the reason)

so that a rerun skips the keys already written or filtered (failed items are tried again: their cause may have
been passing), and a run killed while writing leaves no half pair: on the next open, a claim whose pairs.jsonl line
is missing is finished (both images are there: the line is added) or undone (the one image written is removed).

One writer per folder: `PairLedger` takes a lock file, refused while another live run holds it. Workers never
write to the folder; the driver that holds the ledger writes each result once, so a worker that dies mid-item
leaves nothing behind, and its item goes to another worker.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket

from .errors import ERROR_MODULE
from .student_data import (EDITED_DIR, INPUT_DIR, PairFilter, append_pair_line, indexed_files, read_pair_lines,
                           write_pair_png)

LOG_FILE = "collect_log.jsonl"
LOCK_FILE = ".collect.lock"
KEY_VERSION = 1  # part of every key: bump when what a key covers changes, so old results are not taken as done


class LedgerError(RuntimeError):
    """The folder cannot be collected into (locked by another run, unreadable); the message says what to do."""

    __module__ = ERROR_MODULE


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def item_key(item_input: dict, edit: dict, settings: dict) -> str:
    """The key of one work item: a hash of its input (e.g. {"sha256": ...} or {"seed": 3, "prompt": "..."}), the
    edit (words, or the direction file's hash) and the settings that decide the result. Equal keys mean equal
    work; any change of input, edit or settings gives a new key."""
    blob = json.dumps({"version": KEY_VERSION, "input": item_input, "edit": edit, "settings": settings},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PairLedger:
    """The journal and the one-writer lock of a pair folder. Use as a context manager (the lock is released on
    exit). `done_keys` are the items a rerun skips."""

    def __init__(self, dataset_dir: str):
        self.dataset_dir = os.path.abspath(dataset_dir)
        self.log_path = os.path.join(self.dataset_dir, LOG_FILE)
        self.lock_path = os.path.join(self.dataset_dir, LOCK_FILE)
        self._locked = False
        self.recovered = {"finished": 0, "undone": 0, "temporary_files": 0}
        self._written: dict[str, int] = {}
        self._filtered: set[str] = set()

    # -- lock ------------------------------------------------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self):
        os.makedirs(self.dataset_dir, exist_ok=True)
        self._take_lock()
        try:
            journal = self._journal()
            self._recover(journal)
        except BaseException:
            self.close()
            raise
        self._written = {rec["key"]: rec.get("index") for rec in read_pair_lines(self.dataset_dir) if rec.get("key")}
        self._filtered = {e["key"] for e in journal if e.get("event") == "filtered" and e.get("key")}

    def close(self):
        if self._locked:
            try:
                os.remove(self.lock_path)
            except FileNotFoundError:
                pass
            self._locked = False

    def _take_lock(self):
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(self.lock_path, encoding="utf-8") as f:
                        holder = json.load(f)
                except (OSError, ValueError):
                    holder = {}
                stale = holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                    and not _pid_alive(holder["pid"])
                if stale:  # a run on this machine that is gone (killed): its lock is ours to take
                    os.remove(self.lock_path)
                    continue
                raise LedgerError(
                    f"another collection run is writing to {self.dataset_dir} (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('since', '?')}): wait for it to finish, or, if "
                    f"it is gone, delete {self.lock_path}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise LedgerError(f"could not take the lock {self.lock_path}")

    # -- journal ---------------------------------------------------------------------------------------------
    def _log(self, entry: dict):
        entry = dict(entry, time=_now())
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _journal(self) -> list[dict]:
        out = []
        if os.path.isfile(self.log_path):
            with open(self.log_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a crash
                        continue
                    if isinstance(entry, dict):
                        out.append(entry)
        return out

    def _recover(self, journal):
        """Finish or undo the pairs a killed run left half written (claimed, no pairs.jsonl line)."""
        for sub in (INPUT_DIR, EDITED_DIR):  # _publish_exclusive's temporary files, left by a kill mid-write
            folder = os.path.join(self.dataset_dir, sub)
            for f in os.listdir(folder) if os.path.isdir(folder) else []:
                if f.startswith(".") and f.endswith(".tmp"):
                    os.remove(os.path.join(folder, f))
                    self.recovered["temporary_files"] += 1
        written = {rec.get("index") for rec in read_pair_lines(self.dataset_dir)}
        settled = {e.get("index") for e in journal if e.get("event") in ("undone", "finished")}
        for entry in journal:
            if entry.get("event") != "claim" or entry.get("index") in written or entry.get("index") in settled:
                continue
            line, index = entry["line"], entry["index"]
            paths = [os.path.join(self.dataset_dir, line["input"]), os.path.join(self.dataset_dir, line["edited"])]
            if all(os.path.isfile(p) for p in paths):
                append_pair_line(self.dataset_dir, line)
                self._log({"event": "finished", "index": index, "key": line.get("key")})
                self.recovered["finished"] += 1
            else:
                for p in paths:
                    if os.path.isfile(p):
                        os.remove(p)
                self._log({"event": "undone", "index": index, "key": line.get("key")})
                self.recovered["undone"] += 1

    # -- state -----------------------------------------------------------------------------------------------
    def written_keys(self) -> dict[str, int]:
        """key -> pair index, of the pairs in pairs.jsonl that carry a key."""
        return dict(self._written)

    def done_keys(self) -> set[str]:
        """Keys a rerun skips: written or filtered (a filter decision is part of the result: same key, same
        scores). Failed items are not done."""
        return set(self._written) | self._filtered

    # -- results ---------------------------------------------------------------------------------------------
    def write(self, key: str, input_png: bytes, edited_png: bytes, size: tuple[int, int], record: dict) -> int:
        """Write one kept pair, exactly once per key (a key already written returns its index, writing nothing).
        The claim is journalled before the first file is created."""
        if not self._locked:
            raise LedgerError("the ledger is not open: use it as a context manager")
        if key in self._written:
            return self._written[key]

        def claim(index, line):
            self._log({"event": "claim", "index": index, "key": key, "line": line})

        index = write_pair_png(self.dataset_dir, input_png, edited_png, size, dict(record, key=key), on_claim=claim)
        self._written[key] = index
        return index

    def filtered(self, key: str, label: str, reasons: list[str], scores: dict):
        if key in self._filtered or key in self._written:
            return
        self._log({"event": "filtered", "key": key, "item": label, "reasons": reasons, **scores})
        self._filtered.add(key)

    def failed(self, key: str, label: str, reason: str):
        self._log({"event": "failed", "key": key, "item": label, "reason": reason})


def filter_reasons(pair_filter: PairFilter, structure: float, change: float) -> list[str]:
    """Why `pair_filter` drops a pair with these scores (empty: kept), as SavePairs decides."""
    reasons = []
    if pair_filter.min_structure > 0 and structure < pair_filter.min_structure:
        reasons.append(f"structure {structure:.3f} < {pair_filter.min_structure}")
    if pair_filter.min_change > 0 and change < pair_filter.min_change:
        reasons.append(f"change {change:.4f} < {pair_filter.min_change}")
    return reasons


def partial_files(dataset_dir: str) -> list[str]:
    """Image files with no partner of the same index (input without edited or the reverse): what a writer that
    does not journal its claims can leave behind (the tests check there are none)."""
    a, b = indexed_files(dataset_dir, INPUT_DIR), indexed_files(dataset_dir, EDITED_DIR)
    lone = [a[i] for i in set(a) - set(b)] + [b[i] for i in set(b) - set(a)]
    return sorted(os.path.relpath(p, dataset_dir) for p in lone)
