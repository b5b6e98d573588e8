"""Proto messages <-> schema dataclasses: the only place that knows both shapes."""
from __future__ import annotations

from rlhf_dist.ingest import comparisons_pb2 as pb
from rlhf_dist.ingest.schema import (ComparisonTask, Label, LabelAck, LabeledComparison,
                                     TaskAck)


def task_to_proto(task: ComparisonTask) -> pb.ComparisonTask:
    return pb.ComparisonTask(
        task_id=task.task_id,
        query=task.query,
        samples=task.samples,
        policy_version=task.policy_version,
        metadata=task.metadata,
        query_token_ids=task.query_token_ids,
        sample_token_ids=[pb.TokenIds(ids=ids) for ids in task.sample_token_ids],
    )


def task_from_proto(msg: pb.ComparisonTask) -> ComparisonTask:
    return ComparisonTask(
        task_id=msg.task_id,
        query=msg.query,
        samples=list(msg.samples),
        policy_version=msg.policy_version,
        metadata=dict(msg.metadata),
        query_token_ids=list(msg.query_token_ids),
        sample_token_ids=[list(t.ids) for t in msg.sample_token_ids],
    )


def label_to_proto(label: Label) -> pb.Label:
    return pb.Label(task_id=label.task_id, chosen_index=label.chosen_index,
                    labeler_id=label.labeler_id, cant_tell=label.cant_tell, note=label.note)


def label_from_proto(msg: pb.Label) -> Label:
    return Label(msg.task_id, msg.chosen_index, msg.labeler_id, msg.cant_tell, msg.note)


def labeled_to_proto(item: LabeledComparison) -> pb.LabeledComparison:
    return pb.LabeledComparison(sequence=item.sequence, task=task_to_proto(item.task),
                                label=label_to_proto(item.label),
                                labeled_at_ms=item.labeled_at_ms)


def labeled_from_proto(msg: pb.LabeledComparison) -> LabeledComparison:
    return LabeledComparison(msg.sequence, task_from_proto(msg.task),
                             label_from_proto(msg.label), msg.labeled_at_ms)


def task_ack_to_proto(ack: TaskAck) -> pb.TaskAck:
    return pb.TaskAck(task_id=ack.task_id, task_sequence=ack.task_sequence,
                      posted_at_ms=ack.posted_at_ms)


def task_ack_from_proto(msg: pb.TaskAck) -> TaskAck:
    return TaskAck(msg.task_id, msg.task_sequence, msg.posted_at_ms)


def label_ack_to_proto(ack: LabelAck) -> pb.LabelAck:
    return pb.LabelAck(task_id=ack.task_id, sequence=ack.sequence,
                       labeled_at_ms=ack.labeled_at_ms)


def label_ack_from_proto(msg: pb.LabelAck) -> LabelAck:
    return LabelAck(msg.task_id, msg.sequence, msg.labeled_at_ms)
