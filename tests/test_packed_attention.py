"""Packed variable-length attention: every kernel path keeps segments apart and agrees with per-segment SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llava_ov.model import packed_attention as pa

CU = torch.tensor([0, 7, 19, 20, 33], dtype=torch.int32)  # four segments, one of a single token


def qkv(heads: int = 4, groups: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = int(CU[-1])
    return (torch.randn(t, heads, 8, generator=g), torch.randn(t, groups, 8, generator=g),
            torch.randn(t, groups, 8, generator=g))


def per_segment(q, k, v, causal: bool) -> torch.Tensor:
    """Reference: each segment alone through plain SDPA."""
    outs = []
    for a, b in zip(CU[:-1].tolist(), CU[1:].tolist()):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))
        ks, vs = (x.repeat_interleave(q.shape[1] // k.shape[1], 0) for x in (ks, vs))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("causal", [True, False])
def test_cpu_path_equals_each_segment_alone(causal):
    q, k, v = qkv()
    torch.testing.assert_close(pa.packed_attention(q, k, v, CU, causal=causal), per_segment(q, k, v, causal))


def test_jagged_sdpa_path_equals_each_segment_alone():
    """The GPU fallback (fp32 / dropout) on a nested jagged tensor; the CPU runs its math kernel, non-causal only
    (the ViT's case), GQA by sharing KV heads explicitly."""
    q, k, v = qkv()
    got = pa._nested(q, k, v, CU, causal=False, scale=8 ** -0.5, dropout=0.0)
    torch.testing.assert_close(got, per_segment(q, k, v, False), rtol=1e-5, atol=1e-6)


def test_kernel_choice(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(pa, "flash_attn_varlen_func", object())
    assert pa.backend(cuda, torch.bfloat16) == "flash_attn"
    assert pa.backend(cuda, torch.float32) == "nested"  # flash kernels have no fp32
    assert pa.backend(cuda, torch.bfloat16, dropout=0.1) == "nested"
    assert pa.backend(cpu, torch.bfloat16) == "cpu"
    monkeypatch.setattr(pa, "flash_attn_varlen_func", None)
    monkeypatch.setattr(pa, "varlen_attn", object())
    assert pa.backend(cuda, torch.float16) == "torch_varlen"
    monkeypatch.setattr(pa, "varlen_attn", None)
    assert pa.backend(cuda, torch.float16) == "nested"


@pytest.mark.parametrize("signature", ["2.11+", "2.10"])
@pytest.mark.parametrize("causal", [True, False])
def test_torch_varlen_call_follows_its_signature(monkeypatch, signature, causal):
    """torch's varlen_attn took ``is_causal`` (2.10) and takes ``window_size``/``enable_gqa``/``scale`` since
    2.11: the call is built from the installed signature. A stand-in with the kernel's contract checks it."""
    calls = []
    args = {"window_size", "enable_gqa", "scale"} if signature == "2.11+" else {"is_causal"}

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
        assert set(kwargs) <= args and torch.equal(cu_q, cu_k) and max_q == max_k == 13
        calls.append(kwargs)
        is_causal = kwargs["window_size"] == (-1, 0) if "window_size" in kwargs else kwargs["is_causal"]
        if k.shape[1] != q.shape[1]:
            assert kwargs.get("enable_gqa")
        return pa._windowed(q, k, v, cu_q.tolist(), is_causal, kwargs.get("scale", q.shape[-1] ** -0.5), 0.0)

    monkeypatch.setattr(pa, "varlen_attn", fake)
    monkeypatch.setattr(pa, "_VARLEN_ARGS", args)
    q, k, v = qkv()
    got = pa._torch_varlen(q, k, v, CU, 13, causal, 8 ** -0.5)
    torch.testing.assert_close(got, per_segment(q, k, v, causal))
    assert len(calls) == 1


def test_hf_vit_attention_keeps_images_apart():
    """The HF RICE ViT goes through the same entry point: changing one image leaves the other's features."""
    from llava_ov.model.configuration import RiceVisionConfig
    from llava_ov.model.rice_vit import RiceVisionModel

    torch.manual_seed(0)
    vit = RiceVisionModel(RiceVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, out_hidden_size=48)).eval()
    grids = torch.tensor([[1, 4, 4], [1, 4, 8]])
    pixels = torch.randn(48, 3 * 14 * 14)
    changed = pixels.clone()
    changed[16:] += 1.0
    with torch.no_grad():
        a, b = vit.encode(pixels, grids), vit.encode(changed, grids)
    assert torch.equal(a[:16], b[:16]) and not torch.allclose(a[16:], b[16:])
