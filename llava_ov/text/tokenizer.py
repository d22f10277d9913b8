"""The pipeline's tokenizer: a byte-level BPE trained on the corpora, with Qwen's special tokens and the
Qwen2.5-VL ChatML template, saved as a transformers tokenizer folder (or a validated copy of Qwen3's)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# Ids in the released Qwen3 tokenizer (recipe.md); a trained tokenizer has its own, read them from the folder.
QWEN_IDS = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
            "<|image_pad|>": 151655, "<|video_pad|>": 151656}
SYSTEM_PROMPT = "You are a helpful assistant."
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | replace('<image>', "
    "'<|vision_start|><|image_pad|><|vision_end|>') }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2/Qwen style) on ``texts`` with the Qwen special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=[t for t in SPECIAL_TOKENS if t != "<|endoftext|>"],
                                   model_max_length=32768, clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def import_qwen(source: Path, out: Path) -> PreTrainedTokenizerFast:
    """Validate a local Qwen3 tokenizer folder (special-token ids as released) and copy its files."""
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    wrong = {t: (tok.convert_tokens_to_ids(t), i) for t, i in QWEN_IDS.items() if tok.convert_tokens_to_ids(t) != i}
    if wrong:
        raise ValueError(f"tokenizer in {source} does not have Qwen's special-token ids: {wrong} (got, expected)")
    for name in sorted(p.name for p in source.iterdir() if p.suffix in (".json", ".txt", ".model", ".jinja")):
        if name != "config.json":
            shutil.copy(source / name, out / name)
    return tok


def special_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of the special tokens the model and the template need."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tok.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return ids
