"""lm's Muon step (lm/optim/muon.py): torch's step when plain, the paper's Polar Express, one matrix per
projection, NorMuon and cautious weight decay."""

import pytest
import torch

from lm.optim.muon import NEWTON_SCHULZ, POLAR_EXPRESS, Muon, normuon, orthogonalize, row_blocks

# Amsel et al. 2025, Algorithm 1 (arXiv:2505.16932): the first five polynomials, and the safety factor 1.01.
PAPER_POLAR_EXPRESS = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
]
# The matrices of the demo model (width 128, modern block) and of width 256: c_attn, its Q, c_fc, mlp.c_proj.
SHAPES = [(384, 128), (128, 128), (1024, 128), (128, 512), (768, 256), (256, 256), (1536, 256)]
VARIANTS = [  # each variant alone, then all at once
    dict(orthogonalization="polar_express"),
    dict(normuon=True),
    dict(cautious_weight_decay=True),
    dict(lr_scaling="match_rms_adamw"),
    dict(orthogonalization="polar_express", normuon=True, cautious_weight_decay=True, lr_scaling="match_rms_adamw"),
]


def test_polar_express_coefficients_are_the_papers():
    assert POLAR_EXPRESS == tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in PAPER_POLAR_EXPRESS)


def float64_iteration(g: torch.Tensor, polynomials, margin: float) -> torch.Tensor:
    """X ← aX + (bA + cA²)X, A = XXᵀ, per polynomial, in float64, after X = G / (margin ‖G‖_F + 1e-7)."""
    x = g.double().T if g.size(0) > g.size(1) else g.double()
    x = x / (x.norm() * margin + 1e-7)
    for a, b, c in polynomials:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.size(0) > g.size(1) else x


def papers_polar_express(g: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of the paper, in float64."""
    return float64_iteration(g, [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in PAPER_POLAR_EXPRESS], 1.01)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_polar_express_is_closer_to_the_polar_factor_than_newton_schulz(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    error = lambda o: ((o.double() - u @ vh).norm() / (u @ vh).norm()).item()  # relative, Frobenius
    polar_express, newton_schulz = orthogonalize(g, "polar_express"), orthogonalize(g, "newton_schulz")
    assert error(polar_express) < 0.13 and error(polar_express) < 0.6 * error(newton_schulz)  # measured 0.09 vs 0.2
    papers = papers_polar_express(g)
    assert ((polar_express.double() - papers).norm() / papers.norm()).item() < 0.02  # bfloat16 against float64


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
@pytest.mark.parametrize("shape", [(384, 128), (128, 512), (768, 256)], ids=str)
def test_float32_orthogonalization_is_the_same_iteration_without_bfloat16s_rounding(method, shape):
    """The float32 option (for CPUs without bfloat16 matmuls) computes the iteration the bfloat16 one approximates."""
    torch.manual_seed(0)
    g = torch.randn(shape)
    reference = float64_iteration(g, *((NEWTON_SCHULZ, 1.0) if method == "newton_schulz" else (POLAR_EXPRESS, 1.01)))
    distance = lambda o: ((o.double() - reference).norm() / reference.norm()).item()
    float32, bfloat16 = orthogonalize(g, method, torch.float32), orthogonalize(g, method, torch.bfloat16)
    assert float32.dtype == torch.float32 and bfloat16.dtype == torch.bfloat16
    assert distance(float32) < 1e-4 and distance(bfloat16) > 1e-3  # measured 2e-6–4e-6 vs ~1e-2


def test_a_float32_step_is_the_bfloat16_step_up_to_rounding():
    """The same optimizer step, not another one: only bfloat16's rounding apart."""
    torch.manual_seed(0)
    w, g = torch.randn(96, 32), torch.randn(96, 32)
    in_bfloat16, in_float32 = w.clone(), w.clone()
    settings = dict(lr=0.02, momentum=0.95, weight_decay=0.1)
    steps(Muon([in_bfloat16], **settings), [in_bfloat16], [[g]])
    steps(Muon([in_float32], orthogonalization_dtype=torch.float32, **settings), [in_float32], [[g]])
    step = in_bfloat16 - w
    assert not torch.equal(in_float32, in_bfloat16)
    assert ((in_float32 - w - step).norm() / step.norm()).item() < 0.05  # measured 0.015


def test_an_optimizer_state_saved_before_the_dtype_key_resumes_in_bfloat16():
    w = torch.randn(8, 4)
    saved = Muon([w], lr=0.02, momentum=0.95, weight_decay=0.0).state_dict()
    del saved["param_groups"][0]["orthogonalization_dtype"]
    resumed = Muon([w], lr=0.02, momentum=0.95, weight_decay=0.0, orthogonalization_dtype=torch.float32)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["orthogonalization_dtype"] == torch.bfloat16


def steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()


@pytest.mark.parametrize("lr_scaling", ["original", "match_rms_adamw"])
def test_plain_step_is_torchs_bit_for_bit(lr_scaling):
    torch.manual_seed(0)
    weights = [torch.randn(96, 32), torch.randn(32, 64)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    ours, theirs = [w.clone() for w in weights], [w.clone() for w in weights]
    settings = dict(lr=0.02, momentum=0.95, weight_decay=0.1)
    steps(Muon(ours, lr_scaling=lr_scaling, **settings), ours, grads)
    adjust_lr_fn = None if lr_scaling == "original" else lr_scaling
    steps(torch.optim.Muon(theirs, adjust_lr_fn=adjust_lr_fn, **settings), theirs, grads)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("variant", VARIANTS, ids=["polar_express", "normuon", "cautious", "match_rms_adamw", "all"])
@pytest.mark.parametrize("rows", [(32, 32, 32), (32, 32), (32, 8, 8)], ids=["qkv", "gate_up", "gqa"])
def test_the_update_of_a_fused_matrix_is_the_updates_of_its_parts(variant, rows):
    """c_attn (Q, K, V; K and V narrower under grouped-query attention) or a SwiGLU c_fc (gate, up) with split:
    exactly what its parts get as matrices of their own."""
    torch.manual_seed(0)
    fused = torch.randn(sum(rows), 32)
    grads = [torch.randn_like(fused) for _ in range(3)]
    settings = dict(lr=0.02, momentum=0.95, weight_decay=0.1, **variant)
    separate = [part.clone() for part in fused.split(rows)]
    steps(Muon([{"params": [fused], "split": rows}], **settings), [fused], [[g] for g in grads])
    steps(Muon(separate, **settings), separate, [list(g.split(rows)) for g in grads])
    assert torch.equal(fused, torch.cat(separate))
    unsplit = torch.randn(sum(rows), 32)
    steps(Muon([unsplit], **settings), [unsplit], [[g] for g in grads])
    assert not torch.allclose(unsplit, fused)  # the split matters (the same weights would not follow otherwise)


def test_normuon_equalizes_the_rows_and_keeps_the_norm():
    torch.manual_seed(0)
    update = orthogonalize(torch.randn(96, 32) * torch.linspace(0.1, 3, 96)[:, None], "newton_schulz").float()
    moment = torch.zeros(96, 1)
    normalized = normuon(update, moment)
    assert torch.allclose(moment, 0.05 * update.square().mean(dim=1, keepdim=True))  # β2 = 0.95
    rows = normalized.square().mean(dim=1)
    assert torch.allclose(rows, rows.mean().expand_as(rows), rtol=1e-4)  # every neuron's RMS the same at step 1
    assert normalized.norm() == pytest.approx(update.norm().item(), rel=1e-5)


@pytest.mark.parametrize("orthogonalization", ["newton_schulz", "polar_express"])
def test_cautious_weight_decay_decays_only_where_update_and_weight_agree(orthogonalization):
    torch.manual_seed(0)
    w, g = torch.randn(64, 32), torch.randn(64, 32)
    decayed, plain = w.clone(), w.clone()
    settings = dict(lr=0.02, momentum=0.95, orthogonalization=orthogonalization)
    steps(Muon([decayed], weight_decay=0.5, cautious_weight_decay=True, **settings), [decayed], [[g]])
    steps(Muon([plain], weight_decay=0.0, **settings), [plain], [[g]])
    agree = (plain - w) * w < 0  # the update (w ← w − η u) and the weight agree in sign
    assert 0.2 < agree.float().mean() < 0.8
    assert torch.equal(decayed[~agree], plain[~agree])
    assert torch.allclose(decayed[agree], plain[agree] - 0.02 * 0.5 * w[agree], atol=1e-7)


@pytest.mark.parametrize("shape", [(128, 128), (384, 128), (256, 256), (768, 256)], ids=str)
def test_match_rms_adamw_gives_an_update_of_rms_0_2_lr_at_every_width(shape):
    torch.manual_seed(0)
    w = torch.zeros(shape)
    steps(Muon([w], lr=0.01, momentum=0.0, weight_decay=0.0, lr_scaling="match_rms_adamw"), [w], [[torch.randn(shape)]])
    rms = w.square().mean().sqrt().item()
    assert rms == pytest.approx(0.2 * 0.01, rel=0.25)  # Newton-Schulz's singular values are ≈ 1, not 1


def test_a_split_saved_as_a_count_is_equal_blocks():
    """Checkpoints from before grouped-query attention saved `split` as a count; their groups resume as they ran."""
    assert row_blocks(3, 96) == (32, 32, 32)
    assert row_blocks(None, 96) == (96,)
    assert row_blocks([64, 16, 16], 96) == (64, 16, 16)
