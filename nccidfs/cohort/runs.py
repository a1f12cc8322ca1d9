"""Listing many patients' folders of one warehouse folder in few requests: flat listings of runs of
consecutive patients, as the catalog build lists, instead of one listing per patient or series.

A listing costs a request per 1,000 keys, so 10,000 X-ray patients (about 5 keys each in ``xray/``)
take about 50 requests in runs against 10,000 or more one by one. A run passes over at most
:data:`BRIDGE` patients that are not wanted (their keys are listed and dropped), so a sparse selection
still lists little besides what it wants; the runs are cut short enough that every listing thread has
some.
"""

from __future__ import annotations

from collections.abc import Iterable

# Patients not wanted that a run lists through rather than end and start another listing.
BRIDGE = 4
# Runs per listing thread, so that one long run does not keep the others waiting at the end.
RUNS_PER_THREAD = 4


def folder_order(patients: Iterable[str]) -> list[str]:
    """Patients in the order of their keys: by ``name/`` (``a-b/`` comes before ``a/``)."""
    return sorted(set(patients), key=lambda name: name + "/")


def longest_run(wanted: int, threads: int) -> int:
    """Wanted patients in a run at most: about :data:`RUNS_PER_THREAD` runs for each thread."""
    return max(1, wanted // (threads * RUNS_PER_THREAD))


def plan(every: Iterable[str], wanted: set[str], longest: int) -> list[tuple[list[str], str | None]]:
    """Runs of at most ``longest`` wanted patients, each with the patient after it in the folder (where its
    listing ends; None at the folder's end). ``every`` is the folder's patients as last listed; a wanted
    patient it lacks is put in its place."""
    order = folder_order([*every, *wanted])
    runs: list[tuple[list[str], str | None]] = []
    run: list[str] = []
    passed = 0
    for at, patient in enumerate(order):
        if patient in wanted:
            if run and (passed > BRIDGE or len(run) >= longest):
                runs.append((run, order[at - passed]))
                run = []
            run.append(patient)
            passed = 0
        elif run:
            passed += 1
    if run:
        end_at = len(order) - passed
        runs.append((run, order[end_at] if end_at < len(order) else None))
    return runs
