"""Log-likelihood metrics of lmms-eval tasks: meaningful for every checkpoint, stage0 included.

Generation benchmarks score 0 before instruction tuning (the model does not yet answer a question with a letter or
a word and stop), so each checkpoint is also judged by what it finds likely. lmms-eval's own task machinery builds
the requests (the task's context with its lmms-eval-specific prompt, visuals, reference, choices); the project's
adapter scores them (:func:`llava_ov.eval.lmms_adapter.build_prompt`, one shared-prefix row per document):

- ``loss``: negative log-likelihood per token of the reference answer (the first one, where a task lists several)
  as the assistant's reply to the task's prompt;
- ``mc_accuracy``: multiple choice by summed log-likelihood (ties go to the earlier choice). The choices are the
  task's ``doc_to_choice`` for lmms-eval ``multiple_choice`` tasks, and the option letters for letter-answer
  benchmarks (MMStar, AI2D, MMMU's multiple-choice half: a single-letter reference and options ``A.``/``(A)``/
  ``A:`` listed in the prompt), which are published as generation tasks.

lmms-eval ``multiple_choice`` tasks are scored here rather than by lmms-eval's evaluator, for two upstream
reasons (README, "lmms-eval"): 0.7.3's ``unwrap_generation_output`` turns every ``(logprob, is_greedy)`` result
into a string before scoring, and its ``multiple_choice`` scoring picks ``argmin`` of the returned values, because
its own models return a loss there although the API documents a log-probability (lmms-eval issue #370). The
adapter keeps the documented log-probability; here the most likely choice wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llava_ov.eval.lmms_adapter import build_prompt
from llava_ov.eval.scoring import Prompt

# An option label: a capital letter followed by ".", ":" or ")" (or wrapped as "(A)"), at a line start or after
# whitespace/comma, followed by whitespace.
_OPTION = re.compile(r"(?:^|(?<=[\s,]))\(?([A-Z])[.:)](?=\s)", re.M)


@dataclass(frozen=True)
class LikelihoodItem:
    """One document: its prompt, reference answer, and candidate answers (empty when it is not multiple choice)."""

    doc_id: int
    prompt: Prompt
    reference: str
    choices: tuple[str, ...]


def letter_choices(context: str, reference: str) -> tuple[str, ...]:
    """The option letters ``A, B, ...`` a prompt lists, when the reference is one of them; else ``()``.

    Only the run of consecutive letters from ``A`` counts, so a stray capital in the question text ("U.S.") does not
    become an option."""
    if not re.fullmatch(r"[A-Z]", reference):
        return ()
    found = set(_OPTION.findall(context))
    letters = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if letter not in found:
            break
        letters.append(letter)
    return tuple(letters) if len(letters) >= 2 and reference in letters else ()


def _reference(target, choices: list[str] | None) -> str:
    """The reference answer from lmms-eval's ``doc_to_target`` value: the first where it lists several, and the
    choice it points to where it is an index into ``doc_to_choice``."""
    first = target[0] if isinstance(target, list) else target
    return choices[first] if choices is not None and isinstance(first, int) else str(first)


def likelihood_items(task) -> list[LikelihoodItem]:
    """One item per document of an lmms-eval task (docs in order), from the requests lmms-eval builds for it."""
    task.build_all_requests(rank=0, world_size=1)
    contexts = {}
    for inst in task.instances:
        contexts.setdefault(inst.doc_id, inst.args[0])
    mc = task.OUTPUT_TYPE == "multiple_choice"
    items = []
    for doc_id, context in sorted(contexts.items()):
        doc = task.eval_docs[doc_id]
        choices = [str(c).strip() for c in task.doc_to_choice(doc)] if task.config.doc_to_choice else None
        reference = _reference(task.doc_to_target(doc), choices)
        if mc and reference not in choices:
            raise ValueError(f"task {task.config.task}, doc {doc_id}: reference {reference!r} is not one of its "
                             f"choices {choices}")
        items.append(LikelihoodItem(doc_id, build_prompt(context, task.doc_to_visual(doc)), reference,
                                    tuple(choices) if mc else letter_choices(context, reference)))
    return items


def score_likelihood(scorer, items: list[LikelihoodItem]) -> dict:
    """Per-document records and the summary (``loss``, ``mc_accuracy`` over the multiple-choice documents)."""
    conts = [list(it.choices) or [it.reference] for it in items]
    scores = scorer.loglikelihood([(it.prompt, c) for it, c in zip(items, conts)], close_turn=False)
    records = []
    for it, cs, ss in zip(items, conts, scores):
        ref = ss[cs.index(it.reference)]
        rec = {"doc_id": it.doc_id, "reference": it.reference, "loss": round(-ref.logprob / ref.tokens, 6)}
        if it.choices:
            best = max(range(len(cs)), key=lambda j: (ss[j].logprob, -j))
            rec.update(mc_choice=cs[best], mc_correct=cs[best] == it.reference)
        records.append(rec)
    summary: dict = {"samples": len(records)}
    if records:
        summary["loss"] = round(sum(r["loss"] for r in records) / len(records), 6)
    mc = [r["mc_correct"] for r in records if "mc_correct" in r]
    if mc:
        summary["mc_accuracy"] = round(sum(mc) / len(mc), 6)
        summary["mc_samples"] = len(mc)
    return {"summary": summary, "samples": records}
