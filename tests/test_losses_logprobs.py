"""Chunked completion log-probs: reference passes (``stats=False``) score exactly like training passes."""

from __future__ import annotations

import pytest
import torch

from pyft.losses import token_logps


@pytest.mark.parametrize("chunk_tokens", [7, 4096])
def test_token_logps_without_stats_is_identical(chunk_tokens: int) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    hidden = torch.randn(3, 20, 16, requires_grad=True)
    labels = torch.randint(0, 300, (3, 20))
    labels[:, :5] = -100
    labels[2, 12:] = -100
    full = token_logps(hidden, labels, head, chunk_tokens)
    (grad_full,) = torch.autograd.grad(full.logps.sum(), hidden)
    bare = token_logps(hidden, labels, head, chunk_tokens, stats=False)
    (grad_bare,) = torch.autograd.grad(bare.logps.sum(), hidden)
    assert torch.equal(full.logps, bare.logps)
    assert torch.equal(grad_full, grad_bare)
    assert bare.mean_logits is None and bare.entropy is None and bare.top1 is None
    with torch.no_grad():
        assert torch.equal(token_logps(hidden, labels, head, chunk_tokens, stats=False).logps, full.logps.detach())
    # The metrics themselves: entropy and top-1 from the full distribution at the target positions.
    keep = labels[:, 1:] != -100
    logp_all = torch.log_softmax(head(hidden[:, :-1][keep]).float(), -1).detach()
    assert torch.allclose(full.entropy[keep], -(logp_all.exp() * logp_all).sum(-1), atol=1e-6)
    assert torch.equal(full.top1[keep], (logp_all.argmax(-1) == labels[:, 1:][keep]).float())
