"""One assembly for the daemon and the tests: every pool it starts is shut down, in an order that is safe."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pytest

from tests.clock import FakeClock
from tests.core import LISTING_TTL, READ, assemble_core
from tests.fakes import MemoryStore

KEYS = {"training/ct/Covid1/1.2/1.3/a.dcm": b"a" * 10_000, "training/data/Covid1/status.json": b"{}"}


def test_close_stops_the_readers_then_the_namespace_then_the_databases(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assembly = assemble_core(tmp_path, MemoryStore(KEYS), read=dataclasses.replace(READ, prefetch=True))
    assert assembly.prefetcher is not None
    stopped: list[str] = []
    for name, method in (("prefetcher", "shutdown"), ("catalog", "close"), ("reader", "shutdown"),
                         ("generated", "shutdown"), ("fetcher", "shutdown"), ("namespace", "shutdown"),
                         ("index", "close"), ("catalog_db", "close")):
        part = getattr(assembly, name)
        real = getattr(part, method)
        monkeypatch.setattr(part, method, lambda name=name, real=real: (stopped.append(name), real())[1])
    assembly.fs.readdir("/ct/Covid1/1.2/1.3")  # the namespace's pool has threads now
    assembly.close()
    assert stopped == ["prefetcher", "catalog", "reader", "generated", "fetcher", "namespace", "index", "catalog_db"]
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("list")]


def test_a_listing_under_way_at_close_is_written_before_the_index_closes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, clock = MemoryStore(KEYS), FakeClock()
    assembly = assemble_core(tmp_path, store, clock=clock)
    assembly.fs.readdir("/data/Covid1")
    listed = store.requests["list"]
    store.list_latency = 0.2
    clock.advance(LISTING_TTL)
    assembly.fs.lookup("/data/Covid1")  # past their TTL: it and its folder are listed again in the background
    with caplog.at_level(logging.WARNING):
        assembly.close()
    assert store.requests["list"] > listed, "close returned before the listings under way ended"
    assert [record.getMessage() for record in caplog.records] == []


def test_a_catalog_build_under_way_at_close_stops_and_is_waited_for(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    patients = {f"training/ct/P{n:02d}/1.2/1.3/a.dcm": b"a" * 100 for n in range(40)}
    twins = {f"training/ct-metadata/P{n:02d}/1.2/1.3/a.json": b"{}" for n in range(40)}
    store = MemoryStore({**patients, **twins}, latency=0.2)  # each twin's GET: the build takes seconds
    assembly = assemble_core(tmp_path, store)
    assert assembly.catalog.start()["state"] == "building"
    with caplog.at_level(logging.INFO):
        assembly.close()
    assert assembly.catalog.progress()["state"] == "stopped"
    assert "catalog" not in [thread.name for thread in threading.enumerate()]
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
