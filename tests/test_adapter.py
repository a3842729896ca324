import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import tiny_model
from secateurs import Block, ModelAdapter, SecateursError


@pytest.mark.parametrize("tie", [False, True])
def test_block_counts_sum_to_model_total(family, tie):
    model = tiny_model(family, tie=tie)
    adapter = ModelAdapter(model)
    blocks = adapter.blocks()
    assert len(blocks) == 2 * model.config.num_hidden_layers
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    assert sum(adapter.block_num_params(b) for b in blocks) + adapter.other_num_params() == total
    assert adapter.total_num_params() == total
    embed = model.get_input_embeddings().weight.numel()
    head = 0 if tie else model.get_output_embeddings().weight.numel()
    assert adapter.other_num_params() == embed + head + model.config.hidden_size


def test_block_order_and_names():
    adapter = ModelAdapter(tiny_model("llama"))
    names = [b.name for b in adapter.blocks()]
    assert names == ["mha.0", "mha.1", "mha.2", "mlp.0", "mlp.1", "mlp.2"]
    assert [b.name for b in adapter.blocks("mlp")] == ["mlp.0", "mlp.1", "mlp.2"]
    assert Block.parse("mlp.2") == Block("mlp", 2)
    assert sorted([Block("mlp", 0), Block("mha", 2)]) == [Block("mha", 2), Block("mlp", 0)]
    with pytest.raises(SecateursError, match="bad block name"):
        Block.parse("attn.1")
    with pytest.raises(SecateursError, match="3 layers"):
        adapter.remove_blocks([Block("mha", 3)])


def test_gemma3_blocks_own_four_norms():
    adapter = ModelAdapter(tiny_model("gemma3_text"))
    hidden = adapter.model.config.hidden_size
    attn = sum(p.numel() for p in adapter.submodule(Block("mha", 0)).parameters())
    # input norm + post-attention norm belong to the MHA block; pre/post feed-forward norms to the MLP
    assert adapter.block_num_params(Block("mha", 0)) == attn + 2 * hidden
    mlp = sum(p.numel() for p in adapter.submodule(Block("mlp", 0)).parameters())
    assert adapter.block_num_params(Block("mlp", 0)) == mlp + 2 * hidden


def _capture(model, layer_idx):
    """Run the model; return the input and output hidden states of one decoder layer."""
    adapter = ModelAdapter(model)
    seen = {}
    layer = adapter.layers[layer_idx]

    def keep_input(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    def keep_output(module, args, out):
        seen["y"] = out[0] if isinstance(out, tuple) else out

    h1 = layer.register_forward_pre_hook(keep_input, with_kwargs=True)
    h2 = layer.register_forward_hook(keep_output)
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    h1.remove()
    h2.remove()
    return seen["x"], seen["y"], logits


def _mlp_branch(adapter, layer_idx, h):
    """The MLP residual branch written out from the layer's own modules (independent of removal)."""
    layer = adapter.layers[layer_idx]
    if adapter.layout.name == "sandwich-norm":
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    return layer.mlp(layer.post_attention_layernorm(h))


@pytest.mark.parametrize("layer_idx", [0, 2])
def test_removing_mha_block_equals_layer_without_attention_branch(family, layer_idx):
    dense = tiny_model(family)
    x, _, _ = _capture(dense, layer_idx)
    with torch.no_grad():
        expected = x + _mlp_branch(ModelAdapter(dense), layer_idx, x)
    pruned = copy.deepcopy(dense)
    adapter = ModelAdapter(pruned)
    before = adapter.total_num_params()
    block_params = adapter.block_num_params(Block("mha", layer_idx))
    adapter.remove_blocks([Block("mha", layer_idx)])
    assert adapter.total_num_params() == before - block_params
    assert adapter.removed_blocks() == [Block("mha", layer_idx)]
    x2, y2, _ = _capture(pruned, layer_idx)
    torch.testing.assert_close(x2, x, rtol=0, atol=0)  # earlier layers untouched
    torch.testing.assert_close(y2, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer_idx", [0, 2])
def test_removing_mlp_block_equals_layer_without_mlp_branch(family, layer_idx):
    dense = tiny_model(family)
    adapter = ModelAdapter(dense)
    x, y, _ = _capture(dense, layer_idx)
    # The dense output is h + mlp_branch(h) with h = x + attention branch; recover h from it.
    layer = adapter.layers[layer_idx]
    seen = {}
    last_attn_module = layer.post_attention_layernorm if adapter.layout.name == "sandwich-norm" else layer.self_attn

    def keep_attention(module, args, out):
        seen["attn"] = out[0] if isinstance(out, tuple) else out

    hook = last_attn_module.register_forward_hook(keep_attention)
    _capture(dense, layer_idx)
    hook.remove()
    expected = x + seen["attn"]
    with torch.no_grad():
        torch.testing.assert_close(expected + _mlp_branch(adapter, layer_idx, expected), y, rtol=1e-5, atol=1e-5)
    pruned = copy.deepcopy(dense)
    ModelAdapter(pruned).remove_blocks([Block("mlp", layer_idx)])
    _, y2, _ = _capture(pruned, layer_idx)
    torch.testing.assert_close(y2, expected, rtol=1e-6, atol=1e-6)


def test_removing_both_blocks_makes_layer_identity(family):
    model = tiny_model(family)
    adapter = ModelAdapter(model)
    adapter.remove_blocks([Block("mha", 1), Block("mlp", 1)])
    x, y, logits = _capture(model, 1)
    assert torch.equal(x, y)
    assert torch.isfinite(logits).all()


def test_unsupported_architecture_is_named():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(SecateursError) as info:
        ModelAdapter(model)
    message = str(info.value)
    assert "gpt2" in message and "llama" in message and "gemma3_text" in message
