"""The Slurm executor: a job array through submitit, one array task per case (per GPU of a job), streamed back.

Each array task measures its pairs with a LocalExecutor on its node and
journals every record to the shared folder as it goes. A job that raises, is
preempted, times out, loses its node or is killed still yields one record per
pair: what it journaled, and for the rest the status its end explains. Jobs
are never requeued (``--no-requeue``, and a submitit checkpoint that declines):
a preempted pair says ``preempted`` and ``attnbench run --resume`` measures it
again, so no pair is ever measured twice behind the user's back.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from attnbench.executors.placement import by_case, chunk, gres_gpus
from attnbench.executors.remote import describe, measure_here, rebuild
from attnbench.results import Journal, Record
from attnbench.runner import WORKER_START_TIMEOUT_S, OnStart, Pair, RunOptions, make_record

JOB_STATES = (
    ("PREEMPTED", "preempted"),
    ("TIMEOUT", "timeout"),
    ("DEADLINE", "timeout"),
    ("NODE_FAIL", "node_lost"),
    ("BOOT_FAIL", "node_lost"),
    ("OUT_OF_MEMORY", "oom"),
)
"""Slurm job states (as sacct spells them) that name what befell a job's unfinished pairs; any other is ``crashed``."""


def status_for_job_state(state: str) -> str:
    """The status of the pairs a job left without records, from its final Slurm (or submitit local) state."""
    state = state.upper()
    return next((status for prefix, status in JOB_STATES if state.startswith(prefix)), "crashed")


def timed_out(elapsed_s: float, limit_s: float) -> bool:
    """Whether a signal at ``elapsed_s`` is the time limit approaching rather than preemption.

    submitit's rule: past 80% of the limit, or within its last 10 minutes, whichever comes first.
    """
    return elapsed_s >= min(0.8 * limit_s, limit_s - 600)


class JobSignalled(Exception):
    """SIGTERM or SIGUSR2 reached the job: Slurm preempts it, cancels it, or its time is nearly up."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_signalled(signum, frame):
    raise JobSignalled(signum)


class MeasureInJob:
    """What each array task runs: measure, journal, and on a signal account for every pair left."""

    def __call__(self, described: list[dict], options: RunOptions, env: dict[str, str], journal_path: str,
                 limit_s: float) -> list[dict]:
        started = time.monotonic()
        job = submitit.JobEnvironment()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        context = {"executor": "slurm", "attempt": restarts + 1,
                   "job": {"id": job.job_id, "gpus": os.environ.get("SLURM_JOB_GPUS"),
                           "partition": os.environ.get("SLURM_JOB_PARTITION")}}
        # Ours replace submitit's handlers: its SIGUSR2 handler would requeue a preempted job, re-measuring silently.
        for signum in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(signum, _raise_signalled)
        journal_file = Path(journal_path)
        # Where the job runs, for the driver's records should the job die before its first record.
        journal_file.with_suffix(".started").write_text(
            json.dumps({"node": socket.gethostname(), "job": {**context["job"], "pid": os.getpid()}}))
        records: list[Record] = []
        journal = Journal(journal_file)
        try:
            for record in measure_here(described, options, env, context):
                journal.append(record)
                records.append(record)
        except JobSignalled as sig:
            elapsed = time.monotonic() - started
            status = "timeout" if timed_out(elapsed, limit_s) else "preempted"
            why, then = (("its time limit was near", "a longer --slurm-time gives it room") if status == "timeout"
                         else ("preempted or cancelled", "not requeued: `attnbench run --resume` measures it again"))
            reason = f"the Slurm job got {sig} after {elapsed / 60:.1f} of {limit_s / 60:.0f} min ({why}) " \
                     f"before this pair was measured; {then}"
            measured = {r.key for r in records}
            where = {**context, "node": socket.gethostname()}
            for pair in map(rebuild, described):
                record = make_record(pair.impl, pair.case, status, reason, options, where=where)
                if record.key not in measured:
                    journal.append(record)
                    records.append(record)
        finally:
            journal.close()
        return [r.to_dict() for r in records]

    def checkpoint(self, *args, **kwargs) -> None:
        """submitit calls this on its preemption signal if that comes before ours is installed; None: do not requeue."""
        return None


@dataclass
class _Job:
    job: submitit.Job
    pairs: list[Pair]
    journal: Path
    started: bool = False
    ended_at: float | None = None
    """When the job was first seen done without a result file (which a slow shared filesystem may still deliver)."""


class SlurmExecutor:
    """Measures pairs as a Slurm job array; records stream back as array tasks finish.

    ``gres`` (e.g. ``gpu:h100:1``) or ``constraint`` choose the GPUs; a job gets
    as many cases as its gres has GPUs (else ``gpus_per_job``, default 1 on
    CUDA), one slot each. ``time_min`` defaults to the worst case the per-pair
    timeout allows. ``cluster="local"`` runs the jobs as local processes
    through submitit (the tests); ``folder`` must be on a filesystem the nodes
    share.
    """

    def __init__(self, options: RunOptions, folder: Path, *, device: str = "cuda", partition: str | None = None,
                 gres: str | None = None, constraint: str | None = None, gpus_per_job: int | None = None,
                 time_min: int | None = None, cluster: str = "slurm", env: dict[str, str] | None = None,
                 poll_s: float = 5.0, result_grace_s: float = 30.0) -> None:
        self.options = options
        self.folder = Path(folder)
        self.device = device
        self.partition, self.gres, self.constraint, self.time_min = partition, gres, constraint, time_min
        self.gpus_per_job = gpus_per_job
        self.cluster = cluster
        self.env = dict(env or {})
        self.poll_s = poll_s
        self.result_grace_s = result_grace_s
        self._pending: list[_Job] = []

    def __enter__(self) -> SlurmExecutor:
        return self

    def __exit__(self, *exc) -> None:
        # An interrupted driver must not leave GPU jobs running for nobody.
        for entry in self._pending:
            entry.job.cancel(check=False)
        self._pending = []

    def submit(self, pairs: list[Pair], on_start: OnStart | None = None) -> Iterator[Record]:
        """Submit the array, then yield each job's records as it ends (one per pair, whatever happened)."""
        if not pairs:
            return
        gpus = gres_gpus(self.gres) if self.gres else self.gpus_per_job or 1
        gpus_per_job = max(1, gpus) if self.device == "cuda" else 0
        groups = by_case(pairs)
        jobs = chunk(groups, max(1, gpus_per_job))
        limit_s = 60 * (self.time_min or self._worst_case_min(groups))
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        executor.update_parameters(**self._parameters(gpus_per_job, limit_s))
        journals = self.folder / "records"
        journals.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        body = MeasureInJob()
        entries = []
        with executor.batch():
            for index, job_pairs in enumerate(jobs):
                journal = journals / f"{stamp}-{index}.jsonl"
                job = executor.submit(body, [describe(p) for p in job_pairs], self.options, self.env, str(journal),
                                      limit_s)
                entries.append(_Job(job, job_pairs, journal))
        self._pending = entries
        while self._pending:
            for entry in list(self._pending):
                records = self._poll(entry, on_start)
                if records is not None:
                    self._pending.remove(entry)
                    yield from records
            if self._pending:
                time.sleep(self.poll_s)

    def _parameters(self, gpus_per_job: int, limit_s: float) -> dict:
        params: dict = {"name": "attnbench", "timeout_min": math.ceil(limit_s / 60),
                        # Slurm requeues a job whose node failed unless told not to: that would re-measure silently.
                        "slurm_additional_parameters": {"no_requeue": True}}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.constraint:
            params["slurm_constraint"] = self.constraint
        if self.gres:
            params["slurm_gres"] = self.gres
        elif gpus_per_job:
            params["gpus_per_node"] = gpus_per_job
        return params

    def _worst_case_min(self, groups: list[list[Pair]]) -> int:
        """Minutes a job may need if every round of its largest case ran into the per-pair timeout."""
        o = self.options
        worst_s = WORKER_START_TIMEOUT_S + max(len(g) for g in groups) * max(1, o.timing.processes) * o.timeout_s
        return math.ceil(worst_s / 60) + 5

    def _poll(self, entry: _Job, on_start: OnStart | None) -> list[Record] | None:
        """The job's records once it has ended, else None."""
        job = entry.job
        if not entry.started and on_start is not None and job.state.upper() == "RUNNING":
            entry.started = True
            for pair in entry.pairs:
                on_start(pair)
        if not job.done():
            return None
        if job.paths.result_pickle.exists():
            try:
                got = [Record.from_dict(d) for d in job.result()]
            except (FailedJobError, UncompletedJobError) as exc:
                return self._fill(entry, Journal.read(entry.journal), "error",
                                  f"the Slurm job {job.job_id} raised: {_last_line(str(exc))}")
            return self._fill(entry, got, "error", f"the Slurm job {job.job_id} returned no record for this pair")
        # No result yet: give a shared filesystem time to show it before calling the job lost.
        now = time.monotonic()
        entry.ended_at = entry.ended_at or now
        if now - entry.ended_at < self.result_grace_s:
            return None
        state = job.state
        status = status_for_job_state(state)
        reason = f"the Slurm job {job.job_id} ended without a result (state {state})"
        tail = _last_line(job.stderr() or "")
        if tail:
            reason += f"; its stderr ends: {tail}"
        return self._fill(entry, Journal.read(entry.journal), status, reason)

    def _fill(self, entry: _Job, got: list[Record], status: str, reason: str) -> list[Record]:
        """The job's records: those it produced, and for every other pair of it one saying ``status``."""
        by_key = {r.key: r for r in got}
        where = {"executor": "slurm", "attempt": 1, "job": {"id": entry.job.job_id}}
        started = entry.journal.with_suffix(".started")
        if started.exists():
            where |= json.loads(started.read_text())
        records = []
        for pair in entry.pairs:
            record = make_record(pair.impl, pair.case, status, reason, self.options, where=where)
            records.append(by_key.get(record.key, record))
        return records


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else ""
