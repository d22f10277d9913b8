"""lmms-eval model adapter: ``lmms_eval --model llava_onevision1_5_local --model_args pretrained=<HF folder>``.

Registered through lmms-eval's plugin entry-point group ``lmms_eval.models`` (see ``pyproject.toml``), so the
published benchmarks run on this pipeline's checkpoints and on released LLaVA-OV-1.5 folders with the same prompt
encoding, image processing and scoring as the offline ``eval`` stages (:mod:`llava_ov.eval.scoring`). Loads
safetensors only and never executes code from the checkpoint folder.

Requests arrive in lmms-eval's ``Instance.args`` layouts:

- ``loglikelihood``: ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``
- ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``
- ``generate_until_multi_round``: ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``

Decoding is greedy (the published evaluation setting); a request asking for sampling is refused.
"""

from __future__ import annotations

import io

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from llava_ov.eval.parallel import ParallelScorer, open_scorer
from llava_ov.eval.scoring import Prompt, Scorer
from llava_ov.text.template import PLACEHOLDER

MODEL_ID = "llava_onevision1_5_local"


def manifest():
    """Entry-point payload: lmms-eval imports this module and registers the class under :data:`MODEL_ID`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaOV15Local")


def _image_bytes(visual) -> bytes:
    if isinstance(visual, (bytes, bytearray)):
        return bytes(visual)
    if isinstance(visual, Image.Image):
        buf = io.BytesIO()
        visual.save(buf, format="PNG", compress_level=1)  # lossless, fast, a stable key for the feature cache
        return buf.getvalue()
    raise TypeError(f"{MODEL_ID} handles images only; got a visual of type {type(visual).__name__} "
                    f"(videos and audio are not supported by this adapter)")


def build_prompt(context: str, visuals, history: tuple[tuple[str, str], ...] = ()) -> Prompt:
    """A :class:`Prompt` from an lmms-eval context and its visuals: images go first, one ``<image>`` line each,
    unless the context already places exactly that many ``<image>`` placeholders itself."""
    images = tuple(_image_bytes(v) for v in (visuals or []))
    if images and context.count(PLACEHOLDER) != len(images):
        context = "\n".join([PLACEHOLDER] * len(images) + [context.replace(PLACEHOLDER, "").strip()])
    return Prompt(context, images, history)


def _stop(text: str, until: list[str]) -> str:
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


class LlavaOV15Local(lmms):
    """LLaVA-OV-1.5 from a local Hugging Face folder (``pretrained``).

    ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; ``data_parallel`` replicas (``auto``: one per visible
    GPU) score the requests in parallel, one process each (:mod:`llava_ov.eval.parallel`). This replaces
    ``accelerate launch``: lmms-eval sees one process, so its sample logs stay in document order.
    ``max_pixels``/``min_pixels`` bound the resize (the published evaluation: ``max_pixels=3240000``).
    """

    is_simple = True

    def __init__(self, pretrained: str, batch_size: int | str | None = 8, max_pixels: int | str | None = None,
                 min_pixels: int | str | None = None, device: str | None = "cpu", data_parallel: int | str = 1,
                 dtype: str = "float32", max_new_tokens: int | str = 128, threads: int | str = 0,
                 **unused) -> None:
        super().__init__()
        self.scorer = open_scorer(pretrained, device or "cpu", data_parallel, dtype=dtype,
                                  batch_size=int(batch_size or 8), max_pixels=int(max_pixels or 0),
                                  min_pixels=int(min_pixels or 0), threads=int(threads or 0))
        self.default_max_new_tokens = int(max_new_tokens)

    @classmethod
    def around(cls, scorer: Scorer | ParallelScorer, max_new_tokens: int = 128) -> "LlavaOV15Local":
        """The adapter over an already opened scorer (the eval stage opens one and uses it for both lmms-eval's
        generation tasks and its own log-likelihood metrics)."""
        lm = cls.__new__(cls)
        lmms.__init__(lm)
        lm.scorer, lm.default_max_new_tokens = scorer, max_new_tokens
        return lm

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        items = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            doc = self._doc(task, split, doc_id)
            continuation = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            items.append((build_prompt(context, doc_to_visual(doc)), [str(continuation)]))
        scores = self.scorer.loglikelihood(items, close_turn=False)
        return [(s[0].logprob, s[0].greedy) for s in scores]

    def _generate(self, prompts: list[Prompt], gen_kwargs: list[dict]) -> list[str]:
        """Greedy answers, one batched call per distinct (max_new_tokens, until) setting."""
        out = [""] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        for i, kw in enumerate(gen_kwargs):
            if float(kw.get("temperature") or 0) > 0 or kw.get("do_sample"):
                raise ValueError(f"{MODEL_ID} decodes greedily only (temperature 0); got generation kwargs {kw}")
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            key = (int(kw.get("max_new_tokens") or self.default_max_new_tokens), tuple(until))
            groups.setdefault(key, []).append(i)
        for (max_new, until), idx in sorted(groups.items()):
            for i, text in zip(idx, self.scorer.generate([prompts[i] for i in idx], max_new)):
                out[i] = _stop(text, list(until)).strip()
        return out

    def generate_until(self, requests: list[Instance]) -> list[str]:
        prompts, kwargs = [], []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            prompts.append(build_prompt(context, doc_to_visual(self._doc(task, split, doc_id))))
            kwargs.append(dict(gen_kwargs))
        return self._generate(prompts, kwargs)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[tuple[str, ...]]:
        """Each request is a dialogue. Round 0 uses the request's context and visuals; each later round asks the
        task's ``doc_to_text(doc, previous_output=..., round_idx=..., previous_round_info=...)`` for the next
        ``(visuals, context, terminal, round_results, info)`` until ``terminal``. Earlier rounds (and their
        images) stay in the conversation. Returns the answers of every round."""
        results = []
        for context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split in (r.args for r in requests):
            doc = self._doc(task, split, doc_id)
            kwargs = {k: v for k, v in dict(gen_kwargs).items() if k != "until"}
            visuals, info = doc_to_visual(doc), None
            images: tuple[bytes, ...] = ()
            history: tuple[tuple[str, str], ...] = ()
            outputs: list[str] = []
            while True:
                turn = build_prompt(context, visuals)
                images += turn.images
                outputs.append(self._generate([Prompt(turn.text, images, history)], [kwargs])[0])
                history += ((turn.text, outputs[-1]),)
                visuals, context, terminal, _, info = doc_to_text(doc, previous_output=list(outputs),
                                                                  round_idx=len(outputs), previous_round_info=info)
                if terminal:
                    break
            results.append(tuple(outputs))
        return results
