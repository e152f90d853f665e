"""CAT-Net: cross masked attention, the model (iterations, losses, ResNet key/output parity with torchvision)."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.attention.cross_masked import CrossMaskedAttention
from visattn.layers.attend import use_fused

# --- cross masked attention -------------------------------------------------------------------------------------


def _attn_inputs(seed: int = 0) -> tuple[CrossMaskedAttention, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    module = visattn.create_attention("cross_masked", dim=32, num_heads=4).eval()
    x = torch.randn(2, 32, 5, 7, generator=g)
    context = torch.randn(2, 32, 6, 9, generator=g)
    mask = (torch.rand(2, 1, 6, 9, generator=g) > 0.6).float()
    return module, x, context, mask


@pytest.mark.parametrize("fused", [True, False])
def test_masked_keys_carry_no_information(fused: bool) -> None:
    module, x, context, mask = _attn_inputs()
    g = torch.Generator().manual_seed(1)
    noisy = context + 10 * torch.randn(context.shape, generator=g) * (1 - mask)   # background pixels only
    with torch.no_grad(), use_fused(fused):
        out = module(x, context=context, context_mask=mask)
        out_bg_changed = module(x, context=noisy, context_mask=mask)
        fg_changed = context + 10 * torch.randn(context.shape, generator=g) * mask
        out_fg_changed = module(x, context=fg_changed, context_mask=mask)
    assert torch.equal(out, out_bg_changed)
    # The same edit on foreground pixels does change the output (the test above can fail).
    assert (out - out_fg_changed).abs().max() > 1e-2


def test_soft_mask_weights_keys_by_their_mask_value() -> None:
    # weight_j proportional to mask_j * exp(q.k_j): a key with mask 0.5 counts like half a key.
    module, x, context, _ = _attn_inputs()
    attn = module.cross_attn
    tokens = torch.randn(1, 3, 32)
    ctx = torch.randn(1, 4, 32)
    soft = torch.tensor([[1.0, 0.5, 0.25, 0.0]])
    with torch.no_grad():
        out = attn(tokens, ctx, soft)
        q = attn.q(tokens).view(1, 3, 4, 8).transpose(1, 2)
        k, v = attn.kv(ctx).view(1, 4, 2, 4, 8).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-1, -2) / 8 ** 0.5).exp() * soft[:, None, None, :]
        manual = attn.proj(((w / w.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(1, 3, 32))
    torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-4)


def test_empty_mask_transfers_nothing() -> None:
    module, x, context, mask = _attn_inputs()
    empty = torch.zeros_like(mask)
    with torch.no_grad():
        out = module(x, context=context, context_mask=empty)
        tokens = module.self_attend(x.flatten(2).transpose(1, 2))
        expected = module.norm2(tokens).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()


def test_single_input_is_self_then_cross_attention_to_itself() -> None:
    module, x, _, _ = _attn_inputs()
    with torch.no_grad():
        out = module(x)
        tokens = module.self_attend(x.flatten(2).transpose(1, 2))
        expected = module.cross_attend(tokens, tokens, None).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(out, expected)


def test_cross_masked_bad_masks() -> None:
    module, x, context, mask = _attn_inputs()
    with pytest.raises(ValueError, match="context_mask"):
        module(x, context=context, context_mask=mask[..., :-1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        module(x, context=context, context_mask=mask * 2)
    with pytest.raises(ValueError, match="batch"):
        module(x, context=context[:1], context_mask=mask[:1])
    with pytest.raises(ValueError, match="32"):
        module(x, context=context[:, :16])
