"""megatron-core side: CPU compatibility layer, HF <-> Megatron conversion (TP/PP), forward parity with HF."""

from __future__ import annotations

import os

import pytest
import torch
from packaging.version import Version

from llava_ov.megatron import compat
from llava_ov.megatron.convert import (from_te_names, hf_to_megatron, megatron_to_hf, padded_vocab, rules,
                                       to_te_names)
from llava_ov.model import LlavaOV15ForConditionalGeneration
from llava_ov.model.family import build_config

torch.set_num_threads(1)


def tiny_config(vocab: int = 300):
    return build_config("tiny", vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2),
                        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, vocab_size=vocab),
                        image_token_id=12, video_token_id=13, vision_start_token_id=9, vision_end_token_id=10)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = LlavaOV15ForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():  # non-trivial norms so a swapped or mis-split norm would show
        for name, p in model.named_parameters():
            if "norm" in name or "class_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


# ---------------------------------------------------------------- compat

def test_compat_applies_once_and_only_without_cuda(monkeypatch):
    assert compat.apply() is True
    assert compat.apply() is True  # idempotent
    assert torch.cuda.current_device() == torch.device("cpu")
    torch.cuda.synchronize()  # a no-op instead of raising
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compat.apply() is False
    with compat.device_scope():  # no-op with CUDA present: the CPU tensor keeps its CPU type string
        assert torch.zeros(1).type() == "torch.FloatTensor"


def test_compat_refuses_untested_megatron(monkeypatch):
    monkeypatch.setattr(compat, "megatron_version", lambda: Version("0.17.0"))
    with pytest.raises(RuntimeError, match="tested with megatron-core"):
        compat.apply()


def test_device_scope_maps_cuda_to_cpu_only_inside():
    with compat.device_scope():
        t = torch.zeros(3, device="cuda")
        assert t.device.type == "cpu"
        assert t.type() == "torch.cuda.FloatTensor"
        assert t.cuda() is t
        assert torch.ones(2, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        assert t.to("cuda").device.type == "cpu"
    assert torch.zeros(1).type() == "torch.FloatTensor"
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


# ---------------------------------------------------------------- conversion (pure tensors)

@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("pp", [1, 2])
def test_round_trip_is_bit_exact(hf_model, tp, pp):
    state = hf_model.state_dict()
    shards = hf_to_megatron(state, hf_model.config, tp=tp, pp=pp)
    assert set(shards) == {(p, r) for p in range(pp) for r in range(tp)}
    back = megatron_to_hf(shards, hf_model.config, tp=tp, pp=pp)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_pipeline_split_puts_vision_first_and_head_last(hf_model):
    shards = hf_to_megatron(hf_model.state_dict(), hf_model.config, tp=1, pp=2)
    first, last = shards[(0, 0)], shards[(1, 0)]
    assert any(k.startswith("vision.") for k in first) and not any(k.startswith("vision.") for k in last)
    assert "merger.mlp.linear_fc1.weight" in first
    assert "language_model.output_layer.weight" in last and "language_model.output_layer.weight" not in first
    # one decoder layer per stage, local index 0 on both; stage 1's layer 0 is HF layer 1
    assert torch.equal(last["language_model.decoder.layers.0.mlp.linear_fc2.weight"],
                       hf_model.state_dict()["model.language_model.layers.1.mlp.down_proj.weight"])


def test_tensor_split_layouts(hf_model):
    """QKV regrouped per KV group, gate/up interleaved per rank, proj/fc2 split on dim 1, vocab padded."""
    sd = hf_model.state_dict()
    shards = hf_to_megatron(sd, hf_model.config, tp=2, pp=1)
    p = "model.language_model.layers.0."
    hd = 16
    qkv0 = shards[(0, 0)]["language_model.decoder.layers.0.self_attention.linear_qkv.weight"]
    # rank 0 holds KV group 0: q heads 0,1 then k head 0 then v head 0
    expected = torch.cat([sd[p + "self_attn.q_proj.weight"][:2 * hd], sd[p + "self_attn.k_proj.weight"][:hd],
                          sd[p + "self_attn.v_proj.weight"][:hd]])
    assert torch.equal(qkv0, expected)
    fc1_1 = shards[(0, 1)]["language_model.decoder.layers.0.mlp.linear_fc1.weight"]
    assert torch.equal(fc1_1, torch.cat([sd[p + "mlp.gate_proj.weight"][64:], sd[p + "mlp.up_proj.weight"][64:]]))
    proj_1 = shards[(0, 1)]["language_model.decoder.layers.0.self_attention.linear_proj.weight"]
    assert torch.equal(proj_1, sd[p + "self_attn.o_proj.weight"][:, 32:])
    emb = shards[(0, 0)]["language_model.embedding.word_embeddings.weight"]
    assert padded_vocab(300, 2) == 512 and emb.shape[0] == 256
    tail = shards[(0, 1)]["language_model.embedding.word_embeddings.weight"]
    assert torch.count_nonzero(tail[300 - 256:]) == 0  # padded rows are zero


def test_vit_fused_qkv_is_regrouped_per_head(hf_model):
    sd = hf_model.state_dict()
    qkv = hf_to_megatron(sd, hf_model.config)[(0, 0)]["vision.decoder.layers.0.self_attention.linear_qkv.bias"]
    q, k, v = sd["model.visual.blocks.0.attn.qkv.bias"].chunk(3)
    assert torch.equal(qkv[:48], torch.cat([q[:16], k[:16], v[:16]]))


def test_conversion_errors_are_clear(hf_model):
    sd = dict(hf_model.state_dict())
    sd.pop("lm_head.weight")
    with pytest.raises(ValueError, match="missing \\['lm_head.weight'\\]"):
        hf_to_megatron(sd, hf_model.config)
    with pytest.raises(ValueError, match="do not split evenly"):
        rules(hf_model.config, pp=3)


def test_te_names_round_trip(hf_model):
    shard = hf_to_megatron(hf_model.state_dict(), hf_model.config)[(0, 0)]
    te = to_te_names(shard)
    assert "language_model.decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te
    assert "language_model.decoder.layers.1.mlp.linear_fc1.layer_norm_weight" in te
    assert "vision.decoder.layers.0.self_attention.linear_qkv.layer_norm_bias" in te
    assert from_te_names(te).keys() == shard.keys()


@pytest.mark.parametrize("tp", [1, 2])
def test_te_layout_loads_and_exports_bit_exactly(hf_model, tp):
    """The TE spec's names on the way in (rank_shard te=True, what load_model uses when TE is installed) and out
    (megatron_to_hf te=True, what the export uses): no local-spec norm name is left, the round trip is exact."""
    state = hf_model.state_dict()
    shards = hf_to_megatron(state, hf_model.config, tp=tp, te=True)
    local = hf_to_megatron(state, hf_model.config, tp=tp)
    for position, shard in shards.items():
        assert not [k for k in shard if ".layers." in k and ("input_layernorm" in k or "pre_mlp_layernorm" in k)]
        assert to_te_names(local[position]).keys() == shard.keys()
    back = megatron_to_hf(shards, hf_model.config, tp=tp, te=True)
    assert all(torch.equal(back[k], v) for k, v in state.items()) and back.keys() == state.keys()


def test_sharded_checkpoint_is_read_per_rank_slices_only(hf_model, tmp_path):
    """A released-layout folder in several safetensors shards + index: each (pipeline, tensor) rank reads exactly
    its slices. Bytes read per rank, counted at the reader: the TP ranks of a stage together read the stage's
    tensors once, plus one extra copy of the replicated ones per extra rank; nothing of another stage."""
    from llava_ov.megatron.convert import rank_shard
    from llava_ov.model.weights import INDEX_FILE, WeightFiles

    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / INDEX_FILE).is_file() and len(list(tmp_path.glob("*.safetensors"))) > 3
    files = WeightFiles.open(tmp_path)
    state = hf_model.state_dict()
    nbytes = {k: v.numel() * v.element_size() for k, v in state.items()}
    for tp, pp in ((2, 1), (2, 2), (1, 2)):
        expected = hf_to_megatron(state, hf_model.config, tp=tp, pp=pp)
        table = rules(hf_model.config, pp)
        for p in range(pp):
            on_stage = [r for r in table if min(r.stage, pp - 1) == p]
            stage_bytes = sum(nbytes[n] for r in on_stage for n in r.hf)
            replicated = sum(nbytes[r.hf[0]] for r in on_stage if r.kind == "rep")
            read_by = []
            for r in range(tp):
                with files.slices() as read:
                    shard = rank_shard(hf_model.config, read, tp, pp, p, r)
                    read_by.append(read.bytes_read)
                assert shard.keys() == expected[(p, r)].keys()
                assert all(torch.equal(shard[k], expected[(p, r)][k]) for k in shard), (tp, pp, p, r)
            assert sum(read_by) == stage_bytes + (tp - 1) * replicated, (tp, pp, p)
            assert stage_bytes < sum(nbytes.values()) if pp > 1 else stage_bytes == sum(nbytes.values())
            assert max(read_by) < 0.7 * stage_bytes if tp > 1 else read_by == [stage_bytes], (read_by, stage_bytes)


# ---------------------------------------------------------------- forward parity (one gloo rank)

@pytest.fixture(scope="module")
def megatron_model(hf_model):
    from llava_ov.megatron.model import LlavaOVMegatron
    from llava_ov.train.distributed import init, shutdown

    parallel = init(1, 1)
    model = LlavaOVMegatron(hf_model.config, parallel, padded_vocab(300, 1))
    missing, unexpected = model.load_state_dict(hf_to_megatron(hf_model.state_dict(), hf_model.config)[(0, 0)],
                                                strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    yield model.eval()
    shutdown()
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):  # set by init() for its one-rank group
        os.environ.pop(name, None)


def packed_batch(seed: int = 1) -> dict:
    """Two rows of 40: row 0 = samples of 18 and 14 tokens + 8 padding; row 1 = one sample of 40; 3 images."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, 300, (2, 40), generator=g)
    ids[0, 2:6] = 12      # image 0: 4x4 patches -> 4 tokens
    ids[0, 20:24] = 12    # image 1 (second sample)
    ids[1, 3:11] = 12     # image 2: 4x8 patches -> 8 tokens
    lengths = [18, 14, 8, 40]
    pos = torch.cat([torch.arange(n) for n in lengths]).view(2, 40)
    return {"input_ids": ids, "position_ids": pos, "cu_seqlens": torch.tensor([0, 18, 32, 40, 80], dtype=torch.int32),
            "pixel_values": torch.randn(16 + 16 + 32, 588, generator=g),
            "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4], [1, 4, 8]])}


def megatron_logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(batch["input_ids"].reshape(1, -1), batch["cu_seqlens"], pixel_values=batch["pixel_values"],
                    image_grid_thw=batch["image_grid_thw"])
    return out.reshape(2, 40, -1)[..., :300]


def test_megatron_forward_matches_hf(hf_model, megatron_model):
    batch = packed_batch()
    with torch.no_grad():
        ref = hf_model(**batch).logits
    diff = (megatron_logits(megatron_model, batch) - ref).abs().max().item()
    assert diff < 1e-4, diff


def test_packed_samples_do_not_see_each_other(megatron_model):
    """Changing the second sample (its text and its image) leaves the first sample's logits bit-identical."""
    a = packed_batch()
    b = {k: v.clone() for k, v in a.items()}
    b["input_ids"][0, 24:32] = 7
    b["pixel_values"][16:32] += 1.0
    la, lb = megatron_logits(megatron_model, a), megatron_logits(megatron_model, b)
    assert torch.equal(la[0, :18], lb[0, :18])
    assert not torch.allclose(la[0, 18:32], lb[0, 18:32])
    assert torch.equal(la[1], lb[1])


def test_megatron_backward_reaches_every_parameter(megatron_model):
    batch = packed_batch()
    megatron_model.train()
    labels = torch.roll(batch["input_ids"].reshape(1, -1), -1)
    loss = megatron_model(batch["input_ids"].reshape(1, -1), batch["cu_seqlens"], labels=labels,
                          pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]).mean()
    loss.backward()
    no_grad = [n for n, p in megatron_model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    megatron_model.zero_grad()
    megatron_model.eval()
    assert no_grad == []


def test_trainable_policies_split_the_model_by_module(megatron_model):
    from llava_ov.train.policy import TRAINABLE, is_trainable

    names = [n for n, _ in megatron_model.named_parameters()]
    modules = {n: n.split(".")[0] for n in names}
    assert set(modules.values()) == {"vision", "merger", "language_model"}
    trained = {t: {modules[n] for n in names if is_trainable(n, t)} for t in TRAINABLE}
    assert trained == {"merger": {"merger"}, "merger_llm": {"merger", "language_model"},
                       "all": {"vision", "merger", "language_model"}}


def test_loss_rows_only_equals_full_loss_under_the_mask(megatron_model):
    """With ``loss_mask`` the output layer runs on the labelled positions only; losses and gradients must be the
    full computation's, masked."""
    batch = packed_batch()
    megatron_model.train()
    ids = batch["input_ids"].reshape(1, -1)
    labels = torch.roll(ids, -1)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 5:12] = True
    mask[0, -4:] = True
    kw = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
    results = []
    for extra in ({}, {"loss_mask": mask}):
        megatron_model.zero_grad()
        per_token = megatron_model(ids, batch["cu_seqlens"], labels=labels, **extra, **kw)
        (per_token * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in megatron_model.named_parameters() if p.grad is not None}
        results.append((per_token.detach(), grads))
    megatron_model.zero_grad()
    megatron_model.eval()
    (full, g_full), (rows, g_rows) = results
    torch.testing.assert_close(rows[mask], full[mask], rtol=1e-5, atol=1e-6)
    assert not rows[~mask].any()
    assert g_full.keys() == g_rows.keys()
    for name in g_full:
        torch.testing.assert_close(g_rows[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_megatron_gradients_match_hf(hf_model, megatron_model):
    """Backward parity, not just forward: the same summed token loss gives every parameter the gradient the HF
    model gets for it (HF gradients converted with the weight conversion, which is linear)."""
    batch = packed_batch()
    ids = batch["input_ids"].reshape(1, -1)
    labels = torch.roll(ids, -1)
    hf_model.train(), megatron_model.train()
    hf_model.zero_grad(), megatron_model.zero_grad()
    logits = hf_model(**batch).logits.reshape(1, -1, 300)
    torch.nn.functional.cross_entropy(logits[0], labels[0], reduction="sum").backward()
    megatron_model(ids, batch["cu_seqlens"], labels=labels, pixel_values=batch["pixel_values"],
                   image_grid_thw=batch["image_grid_thw"]).sum().backward()
    hf_grads = {n: p.grad for n, p in hf_model.named_parameters()}
    if "lm_head.weight" not in hf_grads:
        hf_grads["lm_head.weight"] = torch.zeros_like(hf_model.lm_head.weight)
    expected = hf_to_megatron(hf_grads, hf_model.config)[(0, 0)]
    got = {n: p.grad for n, p in megatron_model.named_parameters()}
    hf_model.zero_grad(), megatron_model.zero_grad()
    hf_model.eval(), megatron_model.eval()
    for name, grad in got.items():
        want = expected[name]
        if grad.shape != want.shape:  # padded vocabulary rows of megatron's embedding/output layer
            grad = grad[:want.shape[0]]
        torch.testing.assert_close(grad, want, rtol=1e-3, atol=1e-5, msg=name)


# ---------------------------------------------------------------- memory knobs and precision (one gloo rank)

def _built(hf_model, compute):
    from llava_ov.megatron.model import LlavaOVMegatron, Parallel

    model = LlavaOVMegatron(hf_model.config, Parallel(), padded_vocab(300, 1), compute)
    model.load_state_dict(hf_to_megatron(hf_model.state_dict(), hf_model.config)[(0, 0)], strict=False)
    return model


def _loss_and_grads(model, batch: dict) -> tuple[torch.Tensor, dict]:
    model.train()
    ids = batch["input_ids"].reshape(1, -1)
    losses = model(ids, batch["cu_seqlens"], labels=torch.roll(ids, -1), pixel_values=batch["pixel_values"],
                   image_grid_thw=batch["image_grid_thw"])
    losses.sum().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_activation_recompute_gives_the_same_losses_and_grads(hf_model, megatron_model, recompute):
    """Full recompute (every layer of the ViT and the LM re-runs its forward in backward, megatron's checkpoint
    function) and selective (core attention only) change memory, not numbers."""
    from llava_ov.megatron.model import Compute

    batch = packed_batch()
    plain, re = _built(hf_model, Compute()), _built(hf_model, Compute(recompute=recompute))
    assert re.language_model.decoder.config.recompute_granularity == recompute
    assert re.vision.decoder.config.recompute_granularity == recompute
    l0, g0 = _loss_and_grads(plain, batch)
    l1, g1 = _loss_and_grads(re, batch)
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=0, atol=1e-6, msg=name)


def test_unknown_recompute_is_refused():
    from llava_ov.megatron.model import Compute

    with pytest.raises(ValueError, match="train.common.recompute"):
        Compute(recompute="some")


def test_bf16_params_train_with_fp32_main_params_and_grads(hf_model, megatron_model, tmp_path):
    """dtype bf16: the model's parameters and activations are bf16 (the ViT's rotary table stays fp32), megatron's
    distributed optimizer holds fp32 main params and the DDP buffers fp32 grads; two steps on the CPU train."""
    from llava_ov.megatron.model import Compute
    from llava_ov.megatron.precision import precision
    from llava_ov.train.policy import policy
    from llava_ov.train.trainer import Run, prepare, train_step
    from tests.train_project import train_params

    run = Run(tp=1, pp=1, threads=1, save_every=100, logit_tolerance=1.0, checkpoints=tmp_path, live_dir=None,
              dtype="bf16")
    model = _built(hf_model, run.compute())
    assert run.compute() == Compute(precision=precision("bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.vision.inv_freq.dtype == torch.float32
    assert model.config.bf16 and model.config.params_dtype == torch.bfloat16
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp, optimizer, scheduler = prepare(model, policy("stage1", train_params(trainable="all"), 0), run)
    inner = optimizer.chained_optimizers  # megatron chains one DistributedOptimizer per param group kind
    main = [p for opt in inner for group in opt.shard_fp32_from_float16_groups for p in group]
    assert main and {p.dtype for p in main} == {torch.float32}
    assert {p.main_grad.dtype for p in model.parameters()} == {torch.float32}
    batch = {**packed_batch(), "labels": torch.roll(packed_batch()["input_ids"], -1)}
    losses = []
    for _ in range(3):  # step 0 runs at warmup's lr 0
        (total, count), grad_norm, applied = train_step(ddp, optimizer, [batch])
        scheduler.step(increment=1)
        losses.append(float(total / count))
        assert applied and grad_norm > 0
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[2] < losses[1] == losses[0]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) > 0.9 * len(before)  # a few updates are below bf16's resolution of their parameter...
    assert any(not torch.equal(p, p.bfloat16().float()) for p in main)  # ...and kept in the fp32 main params
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_fp8_is_refused_without_transformer_engine_on_hopper():
    from llava_ov.megatron.precision import precision

    with pytest.raises(RuntimeError, match="fp8 needs Transformer Engine on a Hopper-or-newer GPU"):
        precision("fp8")
    with pytest.raises(ValueError, match="train.common.dtype"):
        precision("int8")
    assert precision("fp16").loss_scaling and not precision("bf16").loss_scaling
    assert precision("fp16").optimizer()["loss_scale"] is None  # None + fp16: megatron's dynamic loss scaler
