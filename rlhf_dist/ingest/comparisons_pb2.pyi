from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ComparisonTask(_message.Message):
    __slots__ = ("task_id", "query", "samples", "policy_version", "metadata", "query_token_ids", "sample_token_ids")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    QUERY_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    query: str
    samples: _containers.RepeatedScalarFieldContainer[str]
    policy_version: int
    metadata: _containers.ScalarMap[str, str]
    query_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sample_token_ids: _containers.RepeatedCompositeFieldContainer[TokenIds]
    def __init__(self, task_id: _Optional[str] = ..., query: _Optional[str] = ..., samples: _Optional[_Iterable[str]] = ..., policy_version: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., query_token_ids: _Optional[_Iterable[int]] = ..., sample_token_ids: _Optional[_Iterable[_Union[TokenIds, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("task_id", "chosen_index", "labeler_id", "cant_tell", "note")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABELER_ID_FIELD_NUMBER: _ClassVar[int]
    CANT_TELL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    chosen_index: int
    labeler_id: str
    cant_tell: bool
    note: str
    def __init__(self, task_id: _Optional[str] = ..., chosen_index: _Optional[int] = ..., labeler_id: _Optional[str] = ..., cant_tell: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class LabeledComparison(_message.Message):
    __slots__ = ("sequence", "task", "label", "labeled_at_ms")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABELED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    task: ComparisonTask
    label: Label
    labeled_at_ms: int
    def __init__(self, sequence: _Optional[int] = ..., task: _Optional[_Union[ComparisonTask, _Mapping]] = ..., label: _Optional[_Union[Label, _Mapping]] = ..., labeled_at_ms: _Optional[int] = ...) -> None: ...

class PostTasksRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[ComparisonTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[ComparisonTask, _Mapping]]] = ...) -> None: ...

class TaskAck(_message.Message):
    __slots__ = ("task_id", "task_sequence", "posted_at_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POSTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_sequence: int
    posted_at_ms: int
    def __init__(self, task_id: _Optional[str] = ..., task_sequence: _Optional[int] = ..., posted_at_ms: _Optional[int] = ...) -> None: ...

class PostTasksResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[TaskAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[TaskAck, _Mapping]]] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("labeler_id", "max_tasks", "lease_seconds")
    LABELER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    labeler_id: str
    max_tasks: int
    lease_seconds: float
    def __init__(self, labeler_id: _Optional[str] = ..., max_tasks: _Optional[int] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("tasks", "lease_expires_at_ms", "labeler_labeled")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LABELER_LABELED_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[ComparisonTask]
    lease_expires_at_ms: int
    labeler_labeled: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[ComparisonTask, _Mapping]]] = ..., lease_expires_at_ms: _Optional[int] = ..., labeler_labeled: _Optional[int] = ...) -> None: ...

class SubmitLabelsRequest(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class LabelAck(_message.Message):
    __slots__ = ("task_id", "sequence", "labeled_at_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LABELED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    sequence: int
    labeled_at_ms: int
    def __init__(self, task_id: _Optional[str] = ..., sequence: _Optional[int] = ..., labeled_at_ms: _Optional[int] = ...) -> None: ...

class SubmitLabelsResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[LabelAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[LabelAck, _Mapping]]] = ...) -> None: ...

class ReadLabelsRequest(_message.Message):
    __slots__ = ("cursor", "max_labels")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MAX_LABELS_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    max_labels: int
    def __init__(self, cursor: _Optional[int] = ..., max_labels: _Optional[int] = ...) -> None: ...

class ReadLabelsResponse(_message.Message):
    __slots__ = ("labels", "next_cursor")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabeledComparison]
    next_cursor: int
    def __init__(self, labels: _Optional[_Iterable[_Union[LabeledComparison, _Mapping]]] = ..., next_cursor: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("tasks_total", "pending", "leased", "labeled", "cant_tell", "per_labeler", "label_rate_per_s", "rate_window_s", "replay_segments", "replay_torn_bytes_dropped", "segments", "fsyncs")
    class PerLabelerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    LABELED_FIELD_NUMBER: _ClassVar[int]
    CANT_TELL_FIELD_NUMBER: _ClassVar[int]
    PER_LABELER_FIELD_NUMBER: _ClassVar[int]
    LABEL_RATE_PER_S_FIELD_NUMBER: _ClassVar[int]
    RATE_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    REPLAY_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_TORN_BYTES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    FSYNCS_FIELD_NUMBER: _ClassVar[int]
    tasks_total: int
    pending: int
    leased: int
    labeled: int
    cant_tell: int
    per_labeler: _containers.ScalarMap[str, int]
    label_rate_per_s: float
    rate_window_s: float
    replay_segments: int
    replay_torn_bytes_dropped: int
    segments: int
    fsyncs: int
    def __init__(self, tasks_total: _Optional[int] = ..., pending: _Optional[int] = ..., leased: _Optional[int] = ..., labeled: _Optional[int] = ..., cant_tell: _Optional[int] = ..., per_labeler: _Optional[_Mapping[str, int]] = ..., label_rate_per_s: _Optional[float] = ..., rate_window_s: _Optional[float] = ..., replay_segments: _Optional[int] = ..., replay_torn_bytes_dropped: _Optional[int] = ..., segments: _Optional[int] = ..., fsyncs: _Optional[int] = ...) -> None: ...
