"""Pretrain a tiny Qwen3 causal LM on the corpora's text with the pipeline's tokenizer.

Documents are the corpora's conversations without their images, rendered in the pipeline's ChatML layout
(system turn, ``<|im_start|>role`` headers, ``<|im_end|>``), joined with ``<|endoftext|>`` and cut into fixed-length
sequences for next-token training on every token. The published recipe starts from chat models
(Qwen3-4B-Instruct-2507, Qwen3-8B) that already speak this template; a tiny LLM trained on plain text does not, and
then Stage-1 (merger only, LLM frozen) cannot teach a frozen LLM the reply format and learns nothing about images.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from llava_ov.optim import OneCycleAdamW


def token_stream(documents: list[list[int]], eos: int) -> torch.Tensor:
    """Token ids of every document, each followed by ``eos``, as one stream."""
    ids: list[int] = []
    for doc in documents:
        ids += [*doc, eos]
    return torch.tensor(ids, dtype=torch.long)


def pretrain_llm(tokenizer: PreTrainedTokenizerFast, documents: list[list[int]], cfg: dict,
                 seed: int) -> tuple[Qwen3ForCausalLM, dict]:
    """Train a fresh Qwen3 of the ``llm_base`` shape on tokenised ``documents``; returns it and its figures."""
    torch.manual_seed(seed)
    stream = token_stream(documents, tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    seq = cfg["seq_len"]
    n_seq = len(stream) // seq
    data = stream[: n_seq * seq].view(n_seq, seq)
    held_out = data[-max(1, n_seq // 50):]
    data = data[: len(data) - len(held_out)]
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=cfg["hidden_size"],
                         intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                         num_attention_heads=cfg["num_attention_heads"],
                         num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
                         max_position_embeddings=cfg["max_position_embeddings"], tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]},
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    model = Qwen3ForCausalLM(config)
    opt = OneCycleAdamW(model.parameters(), cfg["lr"], cfg["steps"], pct_start=0.05, weight_decay=0.01,
                        betas=(0.9, 0.95), clip_grad=1.0)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in (bar := tqdm(range(cfg["steps"]), desc="llm_base")):
        idx = torch.randint(0, len(data), (cfg["batch_size"],), generator=gen)
        loss = opt.step(model(input_ids=data[idx], labels=data[idx]).loss)
        bar.set_postfix(loss=f"{loss:.3f}")
    model.eval()
    with torch.no_grad():
        held = model(input_ids=held_out, labels=held_out).loss.item()
    return model, {"steps": cfg["steps"], "tokens": cfg["steps"] * cfg["batch_size"] * seq, **opt.loss_summary(),
                   "held_out_loss": round(held, 4), "seconds": round(time.perf_counter() - t0, 2)}
