"""The chunked output-layer loss against the cross-entropy of the full logits (fp32, CPU)."""

import pytest
import torch
import torch.nn.functional as F

from lm.model import GPT
from tests.conftest import tiny_config


def loss_and_grads(model: GPT, idx, targets, chunk: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    model.loss_chunk_tokens = chunk
    loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_gradients_close(grads: dict, reference: dict, scale_tolerance: float) -> None:
    """Each gradient within `scale_tolerance` of the largest magnitude in the reference gradient of that tensor."""
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        error = (grad - reference[name]).abs().max() / reference[name].abs().max()
        assert error <= scale_tolerance, (name, error.item())


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_chunked_loss_and_gradients_equal_those_of_the_full_logits(block, tied):
    """One chunk does the operations autograd does for the full logits: the loss equal to 1e-6 of its value (2 units
    in the last place of fp32 seen on some CPUs), gradients to 1e-6. Several chunks change the shapes of the output
    layer's matmuls, whose sums over the 50304-wide vocabulary then round differently (a few units in the last place
    of fp32, seen up to 9e-6 of a gradient's scale after backpropagation)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(block, tie_embeddings=tied))
    with torch.no_grad():
        model.lm_head.weight[50257:] = 5.0  # padded rows that would win if they were predicted
    idx, targets = torch.randint(0, 50257, (2, 12)), torch.randint(0, 50257, (2, 12))
    reference = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())  # the loss from the logits
    full_loss, full_grads = loss_and_grads(model, idx, targets, 0)
    torch.testing.assert_close(full_loss, reference.detach(), atol=0, rtol=0)

    loss, grads = loss_and_grads(model, idx, targets, 4096)  # 24 tokens: one chunk
    torch.testing.assert_close(loss, full_loss, atol=0, rtol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    if not tied:
        assert grads["lm_head.weight"][50257:].abs().sum() == 0  # padding rows learn nothing from the loss

    loss, grads = loss_and_grads(model, idx, targets, 7)  # chunks of 7, 7, 7 and 3 tokens
    torch.testing.assert_close(loss, full_loss, atol=0, rtol=1e-6)
    assert_gradients_close(grads, full_grads, scale_tolerance=5e-5)

    with torch.no_grad():  # validation: the loss alone, chunked the same way
        torch.testing.assert_close(model(idx, targets), full_loss, atol=0, rtol=1e-6)


def test_gradients_accumulate_over_micro_batches():
    torch.manual_seed(0)
    model = GPT(tiny_config(tie_embeddings=False))
    batches = [(torch.randint(0, 50257, (2, 8)), torch.randint(0, 50257, (2, 8))) for _ in range(2)]
    sums = {}
    for chunk in (0, 5):
        model.zero_grad()
        model.loss_chunk_tokens = chunk
        for idx, targets in batches:
            (model(idx, targets) / 2).backward()
        sums[chunk] = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert_gradients_close(sums[5], sums[0], scale_tolerance=5e-5)


def test_the_chunked_loss_follows_a_soft_cap_on_the_logits():
    torch.manual_seed(0)
    model = GPT(tiny_config(logit_softcap=0.5))  # a cap that bends the tiny model's logits a lot
    idx, targets = torch.randint(0, 50257, (2, 12)), torch.randint(0, 50257, (2, 12))
    reference = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    full_loss, full_grads = loss_and_grads(model, idx, targets, 0)
    torch.testing.assert_close(full_loss, reference.detach(), atol=0, rtol=0)
    loss, grads = loss_and_grads(model, idx, targets, 4096)
    torch.testing.assert_close(loss, full_loss, atol=0, rtol=1e-6)
    assert_gradients_close(grads, full_grads, scale_tolerance=1e-5)
    loss, grads = loss_and_grads(model, idx, targets, 7)
    torch.testing.assert_close(loss, full_loss, atol=0, rtol=1e-6)
    assert_gradients_close(grads, full_grads, scale_tolerance=5e-5)


def z_loss_and_grads(model: GPT, idx, targets, chunk: int, z_loss: float):
    model.zero_grad()
    model.loss_chunk_tokens = chunk
    loss, z = model(idx, targets, z_loss=z_loss)
    loss.backward()
    return loss.detach(), z, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("softcap", [None, 0.5], ids=["plain", "softcap"])
def test_z_loss_and_its_gradients_equal_autograd_on_the_full_logits(softcap):
    """PaLM's z-loss, z · mean(logsumexp(logits)²), added inside the chunked loss: value and gradients of every
    parameter as autograd gives them for the full (capped) fp32 logits, with a coefficient large enough to matter."""
    torch.manual_seed(0)
    model = GPT(tiny_config(tie_embeddings=False, logit_softcap=softcap))
    idx, targets = torch.randint(0, 50257, (2, 12)), torch.randint(0, 50257, (2, 12))
    logits = model(idx).flatten(0, 1).float()
    reference_z = 0.1 * logits.logsumexp(dim=-1).square().mean()
    reference = F.cross_entropy(logits, targets.flatten()) + reference_z
    model.zero_grad()
    reference.backward()
    reference_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    loss, z, grads = z_loss_and_grads(model, idx, targets, 0, 0.1)  # the unchunked path
    torch.testing.assert_close(loss, reference.detach(), atol=0, rtol=1e-6)
    assert_gradients_close(grads, reference_grads, scale_tolerance=1e-5)
    for chunk in (4096, 7):  # one chunk; chunks of 7, 7, 7 and 3 tokens
        loss, z, grads = z_loss_and_grads(model, idx, targets, chunk, 0.1)
        torch.testing.assert_close(loss, reference.detach(), atol=0, rtol=1e-6)
        torch.testing.assert_close(z, reference_z.detach(), atol=0, rtol=1e-6)
        assert not z.requires_grad
        assert_gradients_close(grads, reference_grads, scale_tolerance=5e-5)
        with torch.no_grad():  # the same value without gradients (as validation computes it)
            torch.testing.assert_close(model(idx, targets, z_loss=0.1)[0], reference.detach(), atol=0, rtol=1e-6)
    without = z_loss_and_grads(model, idx, targets, 7, 0.0)[2]  # the z-loss's share is far above the tolerance
    assert max((g - reference_grads[n]).abs().max() / reference_grads[n].abs().max() for n, g in without.items()) > 1e-2


def test_a_zero_z_loss_is_bit_for_bit_the_cross_entropy():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    idx, targets = torch.randint(0, 50257, (2, 12)), torch.randint(0, 50257, (2, 12))
    loss, grads = loss_and_grads(model, idx, targets, 7)
    zero_loss, z, zero_grads = z_loss_and_grads(model, idx, targets, 7, 0.0)
    assert torch.equal(zero_loss, loss) and z == 0
    assert all(torch.equal(zero_grads[name], grad) for name, grad in grads.items())
