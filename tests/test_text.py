"""Tokenizer and conversation encoding: special tokens, the chat template and the assistant-only loss mask."""

import pytest

from llava_ov.text.template import ChatEncoder
from llava_ov.text.tokenizer import SPECIAL_TOKENS, train_bpe

TEXTS = ["A yellow circle.", "What colour is the shape?", "blue", "How many squares are there?", "3"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, 300)


def test_training_is_deterministic(tok):
    assert train_bpe(TEXTS, 300).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_special_tokens_are_single_ids(tok):
    for t in SPECIAL_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1


def test_encoder_matches_chat_template_and_masks_assistant_only(tok):
    enc = ChatEncoder(tok)
    messages = [{"role": "user", "content": "<image>\nWhat colour is the shape?"},
                {"role": "assistant", "content": "blue"},
                {"role": "user", "content": "How many squares are there?"},
                {"role": "assistant", "content": "3"}]
    ids, mask = enc.encode(messages, image_tokens=[5])
    rendered = tok.apply_chat_template(messages, tokenize=False)
    expanded = rendered.replace("<|image_pad|>", "<|image_pad|>" * 5)
    assert tok.decode(ids) == expanded
    assert (ids == enc.image_pad_id).sum() == 5
    trained = tok.decode(ids[mask])
    assert trained == "blue<|im_end|>3<|im_end|>"
    prompt, pmask = enc.encode(messages[:1], [5], add_generation_prompt=True)
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n") and not pmask.any()


def test_placeholder_image_mismatch_is_an_error(tok):
    enc = ChatEncoder(tok)
    with pytest.raises(ValueError, match="more <image> placeholders than images"):
        enc.encode([{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "a"}], [4])
    with pytest.raises(ValueError, match="2 images but 1"):
        enc.encode([{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a"}], [4, 4])


def test_a_leading_system_turn_replaces_the_default_and_is_never_trained(tok):
    """Released instruct data carries system turns: they render as the template does and get no loss."""
    enc = ChatEncoder(tok)
    messages = [{"role": "system", "content": "Answer with one word."},
                {"role": "user", "content": "<image>\nWhat colour is the shape?"},
                {"role": "assistant", "content": "blue"}]
    ids, mask = enc.encode(messages, image_tokens=[3])
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nAnswer with one word.<|im_end|>\n<|im_start|>user\n")
    assert tok.decode(ids) == rendered.replace("<|image_pad|>", "<|image_pad|>" * 3)
    assert tok.decode(ids[mask]) == "blue<|im_end|>"
    assert len(ids) == len(mask) and not mask[: list(ids).index(enc.image_pad_id)].any()
