"""A terminal labeling client for a person: plain text in and out, so it works over SSH.

Each round leases one task, shows the query and its K samples, and reads one line:
  1..K [note]   the best sample (an optional note after it)
  c [note]      can't tell
  s             skip (the lease lapses and the task goes back to the queue)
  q             quit (so does end of input)
"""
from __future__ import annotations

import shutil
import textwrap
from typing import Callable

from rlhf_dist.ingest.schema import CANT_TELL_INDEX, ComparisonTask, Label

HELP = ("Best sample 1-{k}, c = can't tell, s = skip, q = quit "
        "(a note may follow, e.g. '2 stays on topic')")


def _wrap(text: str, indent: str) -> str:
    width = max(40, shutil.get_terminal_size((100, 24)).columns - 2)
    lines = text.splitlines() or [""]
    return "\n".join(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                     or indent for line in lines)


def show_task(task: ComparisonTask, write: Callable[[str], None]) -> None:
    write("=" * 60)
    write(f"Task {task.task_id}\nQuery:\n{_wrap(task.query, '    ')}")
    for i, sample in enumerate(task.samples):
        write(f"[{i + 1}]\n{_wrap(sample, '    ')}")


def parse_answer(line: str, k: int) -> tuple[str, int, str] | None:
    """("pick", index, note) | ("cant_tell", -1, note) | ("skip"/"quit", -1, "") | None."""
    head, _, note = line.strip().partition(" ")
    head = head.lower()
    if head in ("s", "skip"):
        return "skip", CANT_TELL_INDEX, ""
    if head in ("q", "quit"):
        return "quit", CANT_TELL_INDEX, ""
    if head in ("c", "?", "cant", "can't"):
        return "cant_tell", CANT_TELL_INDEX, note.strip()
    if head.isdigit() and 1 <= int(head) <= k:
        return "pick", int(head) - 1, note.strip()
    return None


def _ask(task: ComparisonTask, read_line: Callable[[str], str], write) -> tuple[str, int, str]:
    k = len(task.samples)
    while True:
        try:
            line = read_line(HELP.format(k=k) + "\n> ")
        except EOFError:
            return "quit", CANT_TELL_INDEX, ""
        answer = parse_answer(line, k)
        if answer is not None:
            return answer
        write(f"Not understood: {line.strip()!r}")


def run_labeling(client, labeler_id: str, *, read_line: Callable[[str], str] = input,
                 write: Callable[[str], None] = print, lease_seconds: float = 900.0) -> int:
    """Label until the person quits; returns how many labels this session submitted."""
    submitted, just_saved = 0, False
    while True:
        grant = client.lease_grant(labeler_id, 1, lease_seconds)
        if just_saved:  # the lease carries the count, so a labeler token needs no stats call
            write(f"Saved. {labeler_id} has labeled {grant.labeler_labeled} comparisons "
                  f"({submitted} this session).")
            just_saved = False
        if not grant.tasks:
            write("No tasks are waiting.")
            try:
                if read_line("Enter to look again, q to quit\n> ").strip().lower() == "q":
                    break
            except EOFError:
                break
            continue
        task = grant.tasks[0]
        show_task(task, write)
        action, index, note = _ask(task, read_line, write)
        if action == "quit":
            break
        if action == "skip":
            write("Skipped.")
            continue
        client.submit_labels([Label(task.task_id, index, labeler_id,
                                    cant_tell=action == "cant_tell", note=note)])
        submitted, just_saved = submitted + 1, True
    write(f"Done: {submitted} labels this session.")
    return submitted
