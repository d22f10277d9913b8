"""The blind baseline: answer every question with the most frequent training answer for its question pattern.

It never looks at the image, so it measures how much of a task the question text alone gives away (easy-vqa's
yes/no and "what shape" questions have skewed answers). A question's pattern is its text with every word that
is itself a training answer of that source replaced by ``<a>`` ("is there a red shape?" and "is there a blue
shape?" share a pattern). The table comes from the training (instruct) pool only; an unseen pattern falls back to
the source's most frequent answer.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Callable, Iterable

from llava_ov.artifacts import Artifact, digest_json
from llava_ov.code_digest import code_digest
from llava_ov.data.reader import iter_samples
from llava_ov.eval.cache import ResultCache, cache_key
from llava_ov.eval.tasks import Task, dialogue
from llava_ov.text.template import PLACEHOLDER

_WORD = re.compile(r"\w+|[^\w\s]")


def question_pattern(question: str, answer_words: set[str]) -> str:
    words = _WORD.findall(question.replace(PLACEHOLDER, " ").lower())
    return " ".join("<a>" if w in answer_words else w for w in words)


def _top(counter: Counter) -> str:
    """Most frequent key; ties broken by the key itself, so the table is deterministic."""
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]


class BlindBaseline:
    """Most frequent training answer per (source, question pattern)."""

    def __init__(self, table: dict[str, dict[str, str]], fallback: dict[str, str], vocab: dict[str, list[str]]):
        self.table, self.fallback = table, fallback
        self.vocab = {source: set(words) for source, words in vocab.items()}

    @classmethod
    def fit(cls, conversations: Iterable[tuple[str, list[dict]]]) -> "BlindBaseline":
        """Count (source, pattern) -> answer over the user/assistant pairs of training conversations."""
        pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for source, messages in conversations:
            messages = dialogue(messages)
            for q, a in zip(messages[::2], messages[1::2]):
                if q["role"] == "user" and a["role"] == "assistant":
                    pairs[source].append((q["content"], a["content"]))
        table, fallback, vocabs = {}, {}, {}
        for source, qa in sorted(pairs.items()):
            vocab = {w for _, a in qa for w in _WORD.findall(a.lower())}
            by_pattern: dict[str, Counter] = defaultdict(Counter)
            for q, a in qa:
                by_pattern[question_pattern(q, vocab)][a] += 1
            vocabs[source] = sorted(vocab)
            table[source] = {p: _top(c) for p, c in sorted(by_pattern.items())}
            fallback[source] = _top(Counter(a for _, a in qa))
        return cls(table, fallback, vocabs)

    def to_json(self) -> dict:
        return {"table": self.table, "fallback": self.fallback,
                "vocab": {s: sorted(v) for s, v in self.vocab.items()}}

    def answer(self, source: str, question: str) -> str:
        if source not in self.table:
            raise KeyError(f"blind baseline: the training pool has no question/answer pairs from source "
                           f"{source!r}; it cannot answer that task blind")
        return self.table[source].get(question_pattern(question, self.vocab[source]), self.fallback[source])

    def accuracy(self, task: Task, normalise: Callable[[str], str] | None = None) -> float:
        """Normalised exact-match accuracy of the blind answers on ``task``."""
        norm = normalise or task.normalise
        hits = [norm(self.answer(it.source, it.prompt)) == norm(it.target) for it in task.items]
        return round(sum(hits) / len(hits), 6)


def cached_blind_baseline(ingest: Artifact, pools: tuple[str, ...], cache: ResultCache) -> BlindBaseline:
    """The baseline fitted on ``pools`` of an ingest artifact, cached by (ingest digest, pools, the code it runs)."""
    key = cache_key("blind", ingest.digest, digest_json(sorted(pools)), code_digest(__name__))
    cached = cache.get(key)
    if cached is not None:
        return BlindBaseline(**cached)
    blind = BlindBaseline.fit((s["source"], s["messages"]) for _, s, _ in iter_samples(ingest, pools))
    cache.put(key, blind.to_json())
    return blind
