"""CAT-Net: cross masked attention, the model (iterations, losses, ResNet key/output parity with torchvision)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
    module, _, _, _ = _attn_inputs()
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


# --- the ResNet inside MIFE: torchvision keys and outputs --------------------------------------------------------

def _load_make_golden():
    # The golden file stores key names, input and outputs, not 25M weights; the script that wrote it makes the
    # weights from the names and shapes, and the test rebuilds them with the very same function.
    path = Path(__file__).resolve().parent.parent / "scripts" / "make_golden.py"
    spec = importlib.util.spec_from_file_location("visattn_make_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seeded_resnet_state = _load_make_golden().seeded_resnet_state


def _manifest(name: str) -> dict[str, list[int]]:
    import json

    from .conftest import GOLDEN

    return json.loads((GOLDEN / f"catnet_manifest_{name}.json").read_text())["shapes"]


@pytest.mark.parametrize("name,depths", [("resnet50", (3, 4, 6, 3)), ("resnet101", (3, 4, 23, 3))])
def test_resnet_keys_and_shapes_are_torchvisions(name: str, depths: tuple[int, ...]) -> None:
    from visattn.layers.resnet import ResNet

    with torch.device("meta"):
        model = ResNet(depths=depths, num_classes=1000)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == _manifest(name)
    assert sum(p.numel() for p in model.parameters()) == {"resnet50": 25_557_032, "resnet101": 44_549_160}[name]


def test_resnet50_matches_torchvision_outputs() -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from visattn.layers.resnet import ResNet

    from .conftest import GOLDEN

    path = GOLDEN / "catnet_resnet50_seeded.safetensors"
    golden = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        import json

        dilate = json.loads(f.metadata()["meta"])["dilate"]
    state = seeded_resnet_state(_manifest("resnet50"))
    for case in ("output", "output_dilated"):
        model = ResNet(depths=(3, 4, 6, 3), num_classes=1000, dilate=dilate[case]).eval()
        assert visattn.load_pretrained(model, state) == ([], [])
        with torch.no_grad():
            # measured max |diff| 4.8e-7 (logits), 6.3e-7 (layer4 features), values of order 2: the README's 2e-6
            torch.testing.assert_close(model(golden["input"]), golden[case], atol=2e-6, rtol=0)
            if case == "output":
                features = model.forward_intermediates(golden["input"])[-1]
                torch.testing.assert_close(features, golden["features"], atol=2e-6, rtol=0)


def test_torchvision_checkpoint_loads_into_catnet_backbone() -> None:
    # A torchvision ImageNet checkpoint (with fc) loads strictly into model.backbone, and into the whole model with
    # strict=False, where only the CAT-Net head is reported missing.
    state = seeded_resnet_state(_manifest("resnet50"))
    model = visattn.create_model("catnet_r50", num_iters=1)
    assert visattn.load_pretrained(model.backbone, state) == ([], [])
    missing, unexpected = visattn.load_pretrained(model, state, strict=False)
    assert unexpected == [] and missing and not any(k.startswith("backbone.") for k in missing)
    torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"])


# --- the model ----------------------------------------------------------------------------------------------------

def _tiny(**overrides) -> torch.nn.Module:
    from visattn.models.catnet import CATNet

    return visattn.create_model("catnet_r50", **{**CATNet.test_overrides, "query_mask": "hard", **overrides})


def _episode(batch: int = 2, shots: int = 1, size: tuple[int, int] = (40, 48), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, *size, generator=g)
    support = torch.randn(batch, shots, 3, *size, generator=g)
    mask = torch.zeros(batch, shots, *size)
    mask[..., 8:24, 10:30] = 1
    return query, support, mask


@pytest.mark.parametrize("num_iters", [1, 3])
def test_iteration_count(num_iters: int) -> None:
    model = _tiny(num_iters=num_iters).eval()
    query, support, mask = _episode()
    assert len(model.cmat) == num_iters
    with torch.no_grad():
        out = model(query, support=support, support_mask=mask)
    assert out.shape == (2, num_iters + 1, 40, 48)
    assert torch.isfinite(out).all()


def test_each_prediction_depends_only_on_earlier_modules() -> None:
    # Output i (0 = MIFE) is produced by CMAT modules 1..i: its loss reaches module i and never module i + 1. The
    # initial classifier is trained by output 0 alone (later modules see its mask detached, as in Mask2Former).
    model = _tiny(num_iters=3).train()
    query, support, mask = _episode()
    out = model(query, support=support, support_mask=mask)
    for i in range(4):
        model.zero_grad()
        out[:, i].square().mean().backward(retain_graph=True)
        reached = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
                   for block in model.cmat]
        assert reached == [j < i for j in range(3)], (i, reached)
        classifier_grad = model.classifier[-1].weight.grad
        assert (classifier_grad is not None and bool(classifier_grad.abs().sum() > 0)) == (i == 0)


def test_shots_are_a_set() -> None:
    # K-shot: permuting the shots changes nothing, and two copies of one shot equal that single shot.
    model = _tiny().eval()
    query, support, mask = _episode(shots=2)
    mask[:, 1] = 0
    mask[:, 1, 20:36, 4:20] = 1
    with torch.no_grad():
        out = model(query, support=support, support_mask=mask)
        swapped = model(query, support=support.flip(1), support_mask=mask.flip(1))
        one = model(query, support=support[:, 0], support_mask=mask[:, :1])
        twice = model(query, support=support[:, :1].expand(-1, 2, -1, -1, -1),
                      support_mask=mask[:, :1].expand(-1, 2, -1, -1))
    torch.testing.assert_close(out, swapped, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(one, twice, atol=1e-5, rtol=1e-4)


def test_masked_average_ignores_background() -> None:
    from visattn.models.catnet import masked_average

    feats = torch.randn(2, 10, 4)
    mask = torch.zeros(2, 10)
    mask[:, :3] = 1
    changed = feats.clone()
    changed[:, 3:] += 100
    torch.testing.assert_close(masked_average(feats, mask), masked_average(changed, mask))


@pytest.mark.parametrize("directions", ["s2q", "q2s"])
def test_one_direction_ablation(directions: str) -> None:
    model = _tiny(directions=directions).eval()
    block = model.cmat[0]
    assert (block.attn_q.cross_attn is None) == (directions == "q2s")
    assert (block.attn_s.cross_attn is None) == (directions == "s2q")
    query, support, mask = _episode()
    with torch.no_grad():
        assert model(query, support=support, support_mask=mask).shape == (2, 3, 40, 48)


def test_prototype_only_baseline() -> None:
    model = _tiny(prototype_only=True).eval()
    assert not hasattr(model, "cmat") and not hasattr(model, "classifier")
    query, support, mask = _episode()
    with torch.no_grad():
        assert model(query, support=support, support_mask=mask).shape == (2, 1, 40, 48)


def test_query_and_support_sizes_may_differ() -> None:
    model = _tiny().eval()
    query, _, _ = _episode(size=(45, 37))
    _, support, mask = _episode(size=(64, 52))
    with torch.no_grad():
        assert model(query, support=support, support_mask=mask).shape == (2, 3, 45, 37)


def test_bad_support_inputs() -> None:
    model = _tiny().eval()
    query, support, mask = _episode()
    with pytest.raises(ValueError, match="support images and masks"):
        model(query)
    with pytest.raises(ValueError, match="empty"):
        model(query, support=support, support_mask=torch.zeros_like(mask))
    with pytest.raises(ValueError, match="does not match"):
        model(query, support=support, support_mask=mask[..., :-2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(query, support=support, support_mask=mask * 255)
    with pytest.raises(ValueError, match="batch"):
        model(query, support=support[:1], support_mask=mask[:1])
    with pytest.raises(ValueError, match="3 input channels"):
        model(query, support=support[:, :, :1], support_mask=mask)
    with pytest.raises(ValueError, match="32"):
        model(query, support=support[..., :20, :20], support_mask=mask[..., :20, :20])
