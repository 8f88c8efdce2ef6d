"""core.inference_weights: a module built under inference mode gets input gradients inside the block, with its
weights aliased (same memory, no copy), and gets its own tensors back afterwards, also after an error."""
import pytest
import torch

from core.inference_weights import normal_alias, normal_tensor_weights


def _inference_module():
    with torch.inference_mode():
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 2, 1))
    assert all(p.is_inference() for p in module.parameters())
    return module


def test_input_gradient_without_copies_and_originals_restored():
    module = _inference_module()
    originals = {n: p for n, p in module.named_parameters()}
    x = torch.randn(1, 3, 8, 8)
    with torch.enable_grad():
        leaf = x.clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
            module(leaf).square().sum().backward()  # what ComfyUI's weights do without help
        with normal_tensor_weights(module) as count:
            assert count == len(originals)
            inside = dict(module.named_parameters())
            assert all(not p.is_inference() and not p.requires_grad for p in inside.values())
            assert all(inside[n].data_ptr() == originals[n].data_ptr() for n in originals)  # aliases, no copy
            out = module(leaf).square().sum()
        grad, = torch.autograd.grad(out, leaf)  # after the block: the saved aliases stay valid
    assert all(p is originals[n] for n, p in module.named_parameters())
    # the same gradient from a normal copy of the module
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 2, 1))
    twin.load_state_dict({k: v.clone() for k, v in module.state_dict().items()})
    leaf2 = x.clone().requires_grad_(True)
    expected, = torch.autograd.grad(twin(leaf2).square().sum(), leaf2)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    assert all(p.grad is None for p in module.parameters())


def test_restored_after_an_error_and_refused_inside_inference_mode():
    module = _inference_module()
    originals = list(module.parameters())
    with pytest.raises(ValueError):
        with normal_tensor_weights(module):
            raise ValueError("boom")
    assert all(a is b for a, b in zip(module.parameters(), originals))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside"):
        with normal_tensor_weights(module):
            pass


def test_alias_keeps_layout():
    with torch.inference_mode():
        base = torch.arange(24.0).reshape(4, 6)
    view = base.t()[1:]  # a strided view with an offset
    alias = normal_alias(view)
    assert not alias.is_inference() and alias.stride() == view.stride() and torch.equal(alias, view)
