"""VQ-VAE parts: the EMA vector quantiser and the small encoder / decoder.

What these tests protect: the straight-through gradient (identity for z, nothing for the codebook buffers), the
nearest-code assignment, the EMA update against a hand-computed example, that eval mode never changes the codebook,
float32 distances under bf16 autocast, dead-code restarts, perplexity at its two extremes, and — the one that is
easy to lose silently — identical codebooks across 2 DDP ranks (gloo) that were updated with the *global* batch.

Kept tiny (K <= 8, D <= 4, widths 8–16, batch 2–4) so the file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from segen.nets.vq import VectorQuantizer, VQDecoder, VQEncoder, VQOutput

BUFFERS = ("embedding", "cluster_size", "embed_sum", "steps")


def set_codebook(vq: VectorQuantizer, codes: list[list[float]]) -> VectorQuantizer:
    """Put a hand-made codebook in place, consistent with the module's initialisation (one pseudo-observation)."""
    codes_t = torch.tensor(codes, dtype=torch.float32)
    vq.embedding.copy_(codes_t)
    vq.embed_sum.copy_(codes_t)
    vq.cluster_size.fill_(1.0)
    return vq


def vectors_to_z(vectors: list[list[float]]) -> torch.Tensor:
    """``(N, D)`` rows -> ``(1, D, 1, N)``: one image whose positions are the given vectors, in order."""
    v = torch.tensor(vectors, dtype=torch.float32)
    return v.t()[None, :, None, :].contiguous()


def buffers(vq: VectorQuantizer) -> dict[str, torch.Tensor]:
    return {name: getattr(vq, name).clone() for name in BUFFERS}


# ------------------------------------------------------------------------------------------------ quantiser
def test_output_shapes_dtypes_and_buffers_in_state_dict():
    vq = VectorQuantizer(8, 4)
    out = vq(torch.randn(2, 4, 3, 5))
    assert isinstance(out, VQOutput)
    assert out.quantized.shape == (2, 4, 3, 5) and out.quantized.dtype == torch.float32
    assert out.indices.shape == (2, 3, 5) and out.indices.dtype == torch.long
    for scalar in (out.commitment_loss, out.perplexity, out.usage):
        assert scalar.shape == () and scalar.dtype == torch.float32
    # The codebook is learned by EMA: no parameters for an optimizer, but everything is checkpointed.
    assert list(vq.parameters()) == []
    assert set(vq.state_dict()) == {*BUFFERS, "_extra_state"}  # the restart generator's state
    restored = VectorQuantizer(8, 4)
    restored.load_state_dict(vq.state_dict())
    for name in BUFFERS:
        assert torch.equal(getattr(restored, name), getattr(vq, name))


def test_straight_through_gradient_is_identity_and_codebook_gets_none():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    out = vq(z)
    (out.quantized * upstream).sum().backward()  # d(loss)/d(quantized) = upstream
    assert torch.equal(z.grad, upstream)  # identity Jacobian: passed through unchanged
    for name in BUFFERS:
        buf = getattr(vq, name)
        assert not buf.requires_grad and buf.grad is None
    # The forward value is the code itself, not z.
    vq.eval()
    out = vq(z)
    assert torch.allclose(out.quantized, vq.lookup(out.indices))


def test_commitment_loss_is_the_only_loss_and_pulls_z_to_its_code():
    vq = set_codebook(VectorQuantizer(2, 2, commitment=0.25).eval(), [[0.0, 0.0], [10.0, 10.0]])
    z = vectors_to_z([[1.0, 0.0], [2.0, 2.0], [9.0, 11.0]]).requires_grad_()
    out = vq(z)
    # codes [0,0], [0,0], [10,10]: squared errors 1+0, 4+4, 1+1 over 6 elements
    assert out.commitment_loss.item() == pytest.approx(0.25 * 11 / 6)
    out.commitment_loss.backward()
    expected = 0.25 * 2 * (z.detach() - vq.lookup(out.indices)) / 6  # d/dz of beta * mean((z - sg[q])²)
    assert torch.allclose(z.grad, expected)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_nearest_code_matches_brute_force_cdist(mode):
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 3).train(mode == "train")
    z = torch.randn(3, 3, 4, 4) * 1.5
    codebook = vq.embedding.clone()  # before a training-mode update
    out = vq(z)
    flat = z.movedim(1, -1).reshape(-1, 3)
    reference = torch.cdist(flat, codebook).argmin(dim=1).view(3, 4, 4)
    assert torch.equal(out.indices, reference)
    assert torch.allclose(out.quantized, codebook[reference].movedim(-1, 1))


def test_one_ema_update_equals_the_hand_computed_formula():
    decay, eps = 0.5, 0.1
    vq = VectorQuantizer(2, 2, decay=decay, eps=eps, restart_every=0)
    set_codebook(vq, [[0.0, 0.0], [10.0, 10.0]])
    out = vq(vectors_to_z([[1.0, 0.0], [2.0, 2.0], [9.0, 11.0]]))
    assert out.indices.flatten().tolist() == [0, 0, 1]
    # counts n = [2, 1]; sums = [[1+2, 0+2], [9, 11]] = [[3, 2], [9, 11]]
    # cluster_size = 0.5 * [1, 1] + 0.5 * [2, 1] = [1.5, 1.0]
    # embed_sum    = 0.5 * [[0, 0], [10, 10]] + 0.5 * [[3, 2], [9, 11]] = [[1.5, 1.0], [9.5, 10.5]]
    # Laplace: total = 2.5; smoothed = (cluster_size + 0.1) / (2.5 + 2 * 0.1) * 2.5 = [1.6, 1.1] * 2.5 / 2.7
    #          = [40/27, 55/54]
    # embedding = embed_sum / smoothed = [[1.5 * 27/40, 1.0 * 27/40], [9.5 * 54/55, 10.5 * 54/55]]
    expected_embedding = torch.tensor([[1.5 * 27 / 40, 27 / 40], [9.5 * 54 / 55, 10.5 * 54 / 55]])
    assert torch.allclose(vq.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(vq.embed_sum, torch.tensor([[1.5, 1.0], [9.5, 10.5]]))
    assert torch.allclose(vq.embedding, expected_embedding)
    assert vq.steps.item() == 1
    # The output used the codebook *before* the update.
    assert torch.equal(out.quantized.flatten(2).squeeze(0).t(), torch.tensor([[0.0, 0], [0, 0], [10, 10]]))
    # perplexity of usage [2/3, 1/3]; both codes used
    p = torch.tensor([2 / 3, 1 / 3])
    assert out.perplexity.item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    assert out.usage.item() == 1.0


def test_unused_code_keeps_its_position_under_ema():
    vq = set_codebook(VectorQuantizer(2, 1, decay=0.9, restart_every=0), [[0.0], [50.0]])
    for _ in range(5):
        vq(torch.rand(2, 1, 2, 2))  # values in [0, 1): all go to code 0
    # embed_sum and cluster_size of code 1 decay together; only the Laplace smoothing moves it, and only slightly.
    assert vq.embedding[1].item() == pytest.approx(50.0, rel=1e-3)
    assert vq.cluster_size[1].item() == pytest.approx(0.9**5)


def test_eval_mode_does_not_change_buffers():
    torch.manual_seed(2)
    vq = VectorQuantizer(8, 4, restart_every=1).eval()
    before = buffers(vq)
    for _ in range(3):
        vq(torch.randn(2, 4, 3, 3))
    for name, value in before.items():
        assert torch.equal(getattr(vq, name), value), f"{name} changed in eval mode"


def test_distances_are_float32_under_bf16_autocast_and_output_keeps_input_dtype():
    vq = set_codebook(VectorQuantizer(2, 1).eval(), [[100.0], [100.5]])
    seen: list[torch.dtype] = []
    distances = vq.distances

    def spy(flat: torch.Tensor) -> torch.Tensor:
        d = distances(flat)
        seen.append(d.dtype)
        return d

    vq.distances = spy  # type: ignore[method-assign]
    # 100.2 is nearer 100.0, 100.3 nearer 100.5. In bf16, |z|² - 2 z·e + |e|² picks 100.5 for both.
    z = torch.tensor([100.2, 100.3]).view(1, 1, 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = vq(z)
        out16 = vq(z.to(torch.bfloat16))
    assert seen == [torch.float32, torch.float32]
    assert out32.indices.flatten().tolist() == [0, 1]
    assert out32.quantized.dtype == torch.float32
    assert out16.quantized.dtype == torch.bfloat16
    assert out16.commitment_loss.dtype == torch.float32  # scalars stay fp32 for the loss sum and logging

    # Same under autocast with gradients flowing back in the input's dtype.
    zb = torch.randn(2, 1, 2, 2, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(zb)
    (out.quantized.float().sum() + out.commitment_loss).backward()
    assert zb.grad is not None and zb.grad.dtype == torch.bfloat16


def test_dead_codes_are_restarted_onto_batch_vectors_every_restart_every_steps():
    torch.manual_seed(3)
    codes = [[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]
    vq = set_codebook(VectorQuantizer(4, 2, restart_every=3, dead_threshold=1.0), codes)
    never = set_codebook(VectorQuantizer(4, 2, restart_every=0), codes)  # the same updates, no restarts
    batches = [torch.rand(2, 2, 2, 2) for _ in range(3)]  # all near the origin: only code 0 is used
    for batch in batches[:2]:
        vq(batch)
        never(batch)
    # After 2 steps codes 1..3 are dead (cluster size 0.99**2 < 1) but not yet restarted.
    assert (vq.cluster_size[1:] < 1.0).all()
    assert (vq.embedding[1:] > 50).all()
    vq(batches[2])
    never(batches[2])
    flat = batches[2].movedim(1, -1).reshape(-1, 2)
    matches = [(flat == vq.embedding[k]).all(dim=1).nonzero().flatten().tolist() for k in (1, 2, 3)]
    assert all(len(m) == 1 for m in matches), "every dead code must sit exactly on a vector of the batch"
    assert len({m[0] for m in matches}) == 3, "dead codes must be restarted on distinct vectors"
    assert torch.equal(vq.embed_sum[1:], vq.embedding[1:])
    assert torch.equal(vq.cluster_size[1:], torch.ones(3))
    # A live code is left alone.
    assert vq.cluster_size[0] > 1.0
    assert torch.equal(vq.embedding[0], never.embedding[0]) and torch.equal(
        vq.embed_sum[0], never.embed_sum[0]
    )
    assert vq.steps.item() == 3


def test_the_restart_schedule_continues_from_a_loaded_step_count():
    """The schedule counts on a host copy of ``steps`` (no device read per step); a state-dict load resets it."""
    codes = [[0.0, 0.0], [100.0, 100.0]]
    source = set_codebook(VectorQuantizer(2, 2, restart_every=3), codes)
    for _ in range(2):
        source(torch.rand(1, 2, 2, 2))  # all near the origin: code 1 is dead, not yet restarted
    assert source.embedding[1].min() > 50
    restored = VectorQuantizer(2, 2, restart_every=3)
    restored(torch.rand(1, 2, 2, 2))  # a step of its own first, so its host count is stale (1)
    restored.load_state_dict(source.state_dict())
    restored(torch.rand(1, 2, 2, 2))  # step 3 of the loaded run: code 1 is restarted onto the batch
    assert restored.steps.item() == 3 and restored.embedding[1].max() < 1.0


def test_restart_every_zero_never_restarts():
    vq = set_codebook(VectorQuantizer(2, 1, restart_every=0), [[0.0], [100.0]])
    for _ in range(5):
        vq(torch.rand(1, 1, 2, 2))
    assert vq.embedding[1].item() == pytest.approx(100.0, rel=1e-3)


def test_perplexity_is_k_for_uniform_usage_and_one_for_a_single_code():
    codes = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]
    vq = set_codebook(VectorQuantizer(4, 2).eval(), codes)
    uniform = vq(vectors_to_z(codes * 2))
    assert uniform.perplexity.item() == pytest.approx(4.0)
    assert uniform.usage.item() == 1.0
    single = vq(vectors_to_z([[0.1, 0.2]] * 8))
    assert single.perplexity.item() == pytest.approx(1.0)
    assert single.usage.item() == 0.25


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_embeddings": 0}, r"num_embeddings must be an integer >= 1, got 0"),
        ({"decay": 1.0}, r"decay must be in \[0, 1\).*got 1.0"),
        ({"eps": 0.0}, r"eps must be > 0.*got 0.0"),
        ({"restart_every": -1}, r"restart_every must be an integer >= 0.*got -1"),
    ],
)
def test_bad_quantizer_arguments_are_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        VectorQuantizer(**{"num_embeddings": 4, "embedding_dim": 2, **kwargs})


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"shape \(B, 4, H, W\) \(embedding_dim=4\), got \(2, 3, 5, 5\)"):
        VectorQuantizer(8, 4)(torch.randn(2, 3, 5, 5))


# ------------------------------------------------------------------------------------------------ DDP (gloo)
DDP_STEPS = 3
DDP_RESTART_AT = DDP_STEPS  # restart on the last step, so the restarted codes are still exact batch vectors


def ddp_batches(rank: int) -> list[torch.Tensor]:
    """Different data per rank: rank 1's is shifted, so its statistics change the shared update."""
    gen = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(2, 2, 2, 2, generator=gen) + 2.0 * rank for _ in range(DDP_STEPS)]


def make_ddp_quantizers() -> tuple[VectorQuantizer, VectorQuantizer]:
    torch.manual_seed(0)  # the same initial codebook on every rank
    ema = VectorQuantizer(4, 2, decay=0.8, restart_every=0)
    restart = VectorQuantizer(4, 2, decay=0.8, restart_every=DDP_RESTART_AT)
    set_codebook(restart, [[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    return ema, restart


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(1000 + rank)  # different random streams per rank, as under Lightning
        ema, restart = make_ddp_quantizers()
        for batch in ddp_batches(rank):
            ema(batch)
            restart(batch)
        torch.save({"ema": ema.state_dict(), "restart": restart.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_codebooks_stay_identical_and_use_the_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for module in ("ema", "restart"):
        for name in BUFFERS:
            assert torch.equal(rank0[module][name], rank1[module][name]), (
                f"{module}.{name} differs across ranks"
            )

    # The all-reduced update equals one process seeing both ranks' batches at once ...
    both, _ = make_ddp_quantizers()
    for b0, b1 in zip(ddp_batches(0), ddp_batches(1)):
        both(torch.cat([b0, b1]))
    for name in BUFFERS:
        assert torch.allclose(rank0["ema"][name], getattr(both, name), atol=1e-5), name
    # ... and differs from what rank 0 alone would have computed: the all-reduce happened.
    alone, _ = make_ddp_quantizers()
    for batch in ddp_batches(0):
        alone(batch)
    assert not torch.allclose(rank0["ema"]["embedding"], alone.embedding, atol=1e-3)

    # The dead codes (1..3, far from all data) were restarted onto distinct vectors of rank 0's last batch,
    # broadcast to rank 1 (whose data is shifted by 2, so it cannot hold the same vectors).
    flat0 = ddp_batches(0)[-1].movedim(1, -1).reshape(-1, 2)
    restarted = rank0["restart"]["embedding"][1:]
    rows = [(flat0 == code).all(dim=1).nonzero().flatten().tolist() for code in restarted]
    assert all(len(r) == 1 for r in rows) and len({r[0] for r in rows}) == 3, rows


# ------------------------------------------------------------------------------------------------ encoder/decoder
@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_decoder_shapes(channels):
    enc = VQEncoder(channels, 4, hidden=16)
    dec = VQDecoder(channels, 4, hidden=16)
    x = torch.randn(2, channels, 32, 32)
    z = enc(x)
    assert z.shape == (2, 4, 8, 8)
    assert dec(z).shape == (2, channels, 32, 32)
    enc3, dec3 = (
        VQEncoder(channels, 4, hidden=16, num_downsamples=3),
        VQDecoder(channels, 4, hidden=16, num_upsamples=3),
    )
    assert enc3(x).shape == (2, 4, 4, 4) and dec3(enc3(x)).shape == (2, channels, 32, 32)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_parameter_receives_a_gradient_through_the_vq_vae(mode):
    torch.manual_seed(4)
    enc, vq, dec = VQEncoder(3, 4, hidden=16), VectorQuantizer(8, 4), VQDecoder(3, 4, hidden=16)
    for m in (enc, vq, dec):
        m.train(mode == "train")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = vq(enc(x))
    (F.mse_loss(dec(out.quantized), x) + out.commitment_loss).backward()
    missing = [
        f"{prefix}.{n}"
        for prefix, m in (("enc", enc), ("dec", dec))
        for n, p in m.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_encoder_and_decoder_name_bad_inputs():
    with pytest.raises(ValueError, match=r"divisible by 4 \(num_downsamples=2\), got \(1, 3, 30, 30\)"):
        VQEncoder(3, 4, hidden=8)(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"codes of shape \(B, 4, h, w\).*got \(1, 3, 8, 8\)"):
        VQDecoder(3, 4, hidden=8)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"hidden must be an integer >= 1, got 0"):
        VQEncoder(3, 4, hidden=0)


def test_restarts_after_a_state_dict_round_trip_pick_the_same_vectors():
    """The restart generator is part of the state: a quantiser restored mid-run restarts exactly like the original."""

    def make(seed: int) -> VectorQuantizer:
        torch.manual_seed(5)  # the same initial codebook; only the restart generator's seed differs
        return VectorQuantizer(16, 2, decay=0.5, restart_every=2, dead_threshold=0.9, seed=seed)

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 2, 3, 3, generator=gen) for _ in range(4)]
    original = make(0)
    for batch in batches[:2]:
        original(batch)
    copy = make(99)
    copy.load_state_dict(original.state_dict())
    torch.manual_seed(1234)  # the global RNG does not matter
    for batch in batches[2:]:
        original(batch)
        copy(batch)
    assert torch.equal(original.embedding, copy.embedding)
    other = make(99)
    for batch in batches:
        other(batch)
    assert not torch.equal(other.embedding, original.embedding)  # another seed restarts other vectors
