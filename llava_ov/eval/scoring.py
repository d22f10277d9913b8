"""Model-facing evaluation primitives: log-likelihood of continuations and batched greedy generation.

Both the offline runner and the lmms-eval adapter call these, so a number means the same thing in both.

Log-likelihood uses shared-prefix rows: a prompt (system turn, user turn with its images, assistant header) is
encoded once and all of its continuations (the candidate answers of a multiple-choice item) follow it in the same
row. Each continuation attends to the whole prompt and to its own earlier tokens only, with positions that restart
where the prompt ends, so its score is exactly what a separate ``prompt + continuation`` forward would give (the
tests check this), at the cost of one prompt instead of one per choice.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from llava_ov.eval.checkpoint import Checkpoint


@dataclass(frozen=True)
class Prompt:
    """A user turn: text with one ``<image>`` placeholder per image, the encoded bytes of every image of the
    conversation in placeholder order, and optionally earlier (user, assistant) turns of a multi-round dialogue."""

    text: str
    images: tuple[bytes, ...] = ()
    history: tuple[tuple[str, str], ...] = ()

    def messages(self) -> list[dict]:
        turns = [{"role": role, "content": c} for u, a in self.history for role, c in (("user", u), ("assistant", a))]
        return turns + [{"role": "user", "content": self.text}]


@dataclass(frozen=True)
class Score:
    """Log-likelihood of one continuation: summed log-prob, its token count, and whether greedy decoding
    would have produced exactly it."""

    logprob: float
    tokens: int
    greedy: bool


class Scorer:
    """Scores and generates with one loaded checkpoint.

    ``batch_size`` prompts go through the LLM per forward; images go through the ViT ``vision_batch`` at a time
    (its attention is block-diagonal over all images of a call, so smaller calls waste less) and their merged
    features are kept in a bounded LRU (``feature_cache_elements`` floats), so an image shared by a likelihood
    and a generation request, or by two tasks, is encoded once.
    """

    def __init__(self, ckpt: Checkpoint, batch_size: int = 32, vision_batch: int = 16,
                 feature_cache_elements: int = 1 << 27, progress: bool = True) -> None:
        self.ckpt = ckpt
        self.batch_size = batch_size
        self.vision_batch = vision_batch
        self.progress = progress
        self._budget = feature_cache_elements
        self._features: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._cached = 0
        self.device = next(ckpt.model.parameters()).device

    # -- encoding ---------------------------------------------------------------------------------------------

    def grid(self, data: bytes) -> tuple[int, int, int]:
        with Image.open(io.BytesIO(data)) as im:  # header only: size without decoding pixels
            return self.ckpt.images.grid(im.width, im.height)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of the conversation up to the assistant header (image pads expanded)."""
        tokens = [self.ckpt.images.num_image_tokens(self.grid(b)) for b in prompt.images]
        ids, _ = self.ckpt.encoder.encode(prompt.messages(), tokens, add_generation_prompt=True)
        return ids.tolist()

    def encode_continuation(self, text: str, close_turn: bool) -> list[int]:
        """Token ids of an answer, encoded as training encodes assistant content; ``close_turn`` adds
        ``<|im_end|>`` (the full answer must end there)."""
        ids = self.ckpt.tokenizer.encode(text, add_special_tokens=False)
        return ids + [self.ckpt.encoder.im_end_id] if close_turn else ids

    def image_features(self, images: list[bytes]) -> list[torch.Tensor]:
        """Merged ViT features [tokens, d_llm] of each image, from the LRU or computed in ViT batches."""
        missing = [b for b in dict.fromkeys(images) if b not in self._features]
        visual = self.ckpt.model.model.visual
        for start in range(0, len(missing), self.vision_batch):
            chunk = missing[start:start + self.vision_batch]
            pixels, grids = zip(*(self.ckpt.images(b) for b in chunk))
            feats = visual(torch.from_numpy(np.concatenate(pixels)).to(self.device),
                           torch.tensor(grids, dtype=torch.long, device=self.device))
            sizes = [self.ckpt.images.num_image_tokens(g) for g in grids]
            for data, f in zip(chunk, feats.split(sizes)):
                self._features[data] = f
                self._cached += f.numel()
        found = []
        for data in images:
            self._features.move_to_end(data)
            found.append(self._features[data])
        while self._cached > self._budget and len(self._features) > len(set(images)):
            self._cached -= self._features.popitem(last=False)[1].numel()
        return found

    def embed(self, ids: torch.Tensor, images: list[bytes]) -> torch.Tensor:
        """Input embeddings with each image's features in its ``<|image_pad|>`` slots (the model's ``embed``,
        fed from the feature cache)."""
        ids = ids.to(self.device)
        embeds = self.ckpt.model.get_input_embeddings()(ids)
        slots = ids == self.ckpt.model.config.image_token_id
        if not images:
            return embeds
        feats = torch.cat(self.image_features(images)).to(embeds.dtype)
        if feats.shape[0] != int(slots.sum()):
            raise ValueError(f"{feats.shape[0]} image features but {int(slots.sum())} <|image_pad|> tokens")
        return embeds.masked_scatter(slots[..., None], feats)

    # -- log-likelihood ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def loglikelihood(self, items: list[tuple[Prompt, list[str]]], close_turn: bool = True) -> list[list[Score]]:
        """For each (prompt, continuations): one :class:`Score` per continuation, in order."""
        rows = [(self.encode_prompt(p), [self.encode_continuation(c, close_turn) for c in conts]) for p, conts in items]
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]) + sum(map(len, rows[i][1])), i))
        out: list[list[Score]] = [[] for _ in items]
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc="loglikelihood", disable=not self.progress, leave=False):
            chunk = order[start:start + self.batch_size]  # similar lengths together: little padding
            scores = self._score_rows([rows[i] for i in chunk], [b for i in chunk for b in items[i][0].images])
            for i, s in zip(chunk, scores):
                out[i] = s
        return out

    def _score_rows(self, rows: list[tuple[list[int], list[list[int]]]], images: list[bytes]) -> list[list[Score]]:
        length = max(len(p) + sum(len(c) for c in cs) for p, cs in rows)
        ids = torch.full((len(rows), length), self.ckpt.encoder.pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), length), dtype=torch.long)
        seg = torch.full((len(rows), length), -1, dtype=torch.long)  # 0 prompt, j+1 continuation j, -1 padding
        for r, (prompt, conts) in enumerate(rows):
            flat = prompt + [t for c in conts for t in c]
            ids[r, :len(flat)] = torch.tensor(flat)
            pos[r, :len(flat)] = torch.tensor(list(range(len(prompt))) +
                                              [len(prompt) + k for c in conts for k in range(len(c))])
            seg[r, :len(flat)] = torch.tensor([0] * len(prompt) + [j + 1 for j, c in enumerate(conts) for _ in c])
        idx = torch.arange(length)
        causal = idx[:, None] >= idx[None, :]
        mask = causal & ((seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0))
        hidden = self.ckpt.model.model.language_model(inputs_embeds=self.embed(ids, images),
                                                      position_ids=pos.to(self.device),
                                                      attention_mask=mask[:, None].to(self.device)).last_hidden_state
        # Token k of a continuation is predicted from the previous token: the prompt's last token for k = 0, else
        # the continuation's own token k-1. Only those positions go through the LM head.
        where, targets, owner = [], [], []
        for r, (prompt, conts) in enumerate(rows):
            start = len(prompt)
            for j, cont in enumerate(conts):
                where += [(r, len(prompt) - 1)] + [(r, start + k) for k in range(len(cont) - 1)]
                targets += cont
                owner += [(r, j)] * len(cont)
                start += len(cont)
        rr, cc = torch.tensor(where).T
        logprobs = torch.log_softmax(self.ckpt.model.lm_head(hidden[rr, cc]).float(), dim=-1).cpu()
        target = torch.tensor(targets)
        token_lp = logprobs.gather(-1, target[:, None])[:, 0].tolist()
        token_hit = (logprobs.argmax(-1) == target).tolist()
        sums: dict[tuple[int, int], list] = {}
        for key, lp, hit in zip(owner, token_lp, token_hit):
            acc = sums.setdefault(key, [0.0, 0, True])
            acc[0] += lp
            acc[1] += 1
            acc[2] = acc[2] and hit
        return [[Score(*sums[(r, j)]) for j in range(len(conts))] for r, (_, conts) in enumerate(rows)]

    # -- generation -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        """Greedy answers (text before ``<|im_end|>``), batched with left padding, shortest prompts together."""
        encoded = [self.encode_prompt(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        out: list[str] = [""] * len(prompts)
        pad, end = self.ckpt.encoder.pad_id, self.ckpt.encoder.im_end_id
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc="generate", disable=not self.progress, leave=False):
            chunk = order[start:start + self.batch_size]
            length = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), length), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, length - len(encoded[i]):] = torch.tensor(encoded[i])
                attn[r, length - len(encoded[i]):] = 1
            embeds = self.embed(ids, [b for i in chunk for b in prompts[i].images])
            gen = self.ckpt.model.generate(inputs_embeds=embeds, attention_mask=attn.to(self.device),
                                           max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end,
                                           pad_token_id=pad).cpu()
            for r, i in enumerate(chunk):
                new = gen[r].tolist()  # with inputs_embeds, generate returns only the new tokens
                new = new[:new.index(end)] if end in new else new
                out[i] = self.ckpt.tokenizer.decode([t for t in new if t != pad], skip_special_tokens=True)
        return out
