"""The engine's classification queue: the spam checks and explanations of every caller (app and API), batched into
forward passes that take turns with the decode steps. The scheduler thread runs `one_pass` once per iteration:

  - one pass is for one classifier (the head job's), at most `classify_batch` items and `classify_tokens` padded
    tokens (rows x the longest row, when the classifier can count them: `row_tokens`), so a 20,000-row upload or a
    long message's explanation never holds up a decode step for long;
  - the jobs in line take turns: after its pass the head job goes to the back, so a one-line check is not stuck
    behind an upload or an explanation;
  - a job whose items fail is retried alone, so one caller's bad text fails only that caller.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from llm.serving.limits import EngineLimits

log = logging.getLogger("llm.serving")


@dataclass(eq=False)
class ClassifyJob:
    classifier: Any  # has .classify(list of items) -> one result each; may have .row_tokens(item) -> int
    texts: list  # the items: texts, or token rows of explanations
    sink: Callable[[str, Any], None]  # ("done", results) | ("error", Exception)
    results: list = field(default_factory=list)
    cancelled: bool = False


class ClassifyQueue:
    def __init__(self, limits: EngineLimits, lock: threading.Condition):
        self.limits, self._lock = limits, lock  # the engine's lock: what `add` and `drop` expect to be held
        self.jobs: deque[ClassifyJob] = deque()
        self.queued = 0  # items waiting, over all jobs (bounded by classify_max_queued)

    def add(self, job: ClassifyJob) -> bool:
        """Queue `job` (lock held); False when it would pass classify_max_queued."""
        if self.queued + len(job.texts) > self.limits.classify_max_queued:
            return False
        self.jobs.append(job)
        self.queued += len(job.texts)
        return True

    def drop(self, job: ClassifyJob) -> None:
        """Take `job` out of line (lock held) and give its queue space back."""
        if job in self.jobs:
            self.jobs.remove(job)
            self.queued -= len(job.texts) - len(job.results)

    def one_pass(self) -> None:
        """One forward pass over items of the jobs in line (called by the scheduler thread, lock not held)."""
        with self._lock:  # (cancelled jobs have already left the queue: see drop)
            head = self.jobs[0].classifier if self.jobs else None
            offered, n = [], 0
            for job in self.jobs:  # one forward pass, for one classifier (a process has one)
                if n >= self.limits.classify_batch:
                    break
                if job.classifier is head:
                    texts = job.texts[len(job.results):len(job.results) + self.limits.classify_batch - n]
                    offered.append((job, texts))
                    n += len(texts)
        if not offered:
            return
        picked = self._within_budget(head, offered)  # tokenizing happens here, outside the lock
        try:
            verdicts = head.classify([t for _, texts in picked for t in texts])
        except Exception:  # one caller's bad text must not fail the others: each job again, alone
            verdicts = None
        outcomes, start = [], 0
        for job, texts in picked:
            if verdicts is not None:
                outcomes.append(verdicts[start:start + len(texts)])
                start += len(texts)
                continue
            try:
                outcomes.append(head.classify(texts))
            except Exception as e:  # a bad input or a bug: this job fails, with the error
                log.exception("classify failed")
                outcomes.append(e)
        with self._lock:
            for (job, texts), outcome in zip(picked, outcomes):
                if job not in self.jobs:  # cancelled while it was being classified
                    continue
                if isinstance(outcome, Exception):
                    self.drop(job)
                    job.sink("error", outcome)
                    continue
                job.results.extend(outcome)
                self.queued -= len(texts)
                if len(job.results) == len(job.texts):
                    self.jobs.remove(job)
                    job.sink("done", job.results)
            first = picked[0][0]
            if first in self.jobs and len(self.jobs) > 1:  # unfinished: the others go first next time
                self.jobs.remove(first)
                self.jobs.append(first)

    def _within_budget(self, classifier, offered: list) -> list:
        """The longest prefix of the offered items whose padded size (rows x the longest row) fits classify_tokens;
        at least one item."""
        count = getattr(classifier, "row_tokens", None)
        picked, rows, longest = [], 0, 0
        for job, texts in offered:
            take = 0
            for text in texts:
                try:
                    tokens = count(text) if count else 0
                except Exception:  # noqa: BLE001 - a text that cannot be counted fails in classify, for its job alone
                    tokens = 0
                if rows and (rows + 1) * max(longest, tokens) > self.limits.classify_tokens:
                    break
                rows, longest, take = rows + 1, max(longest, tokens), take + 1
            if take:
                picked.append((job, texts[:take]))
            if take < len(texts):
                break
        return picked
