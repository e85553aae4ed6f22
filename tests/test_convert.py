"""Conversion of original SOP / iBOT / DINO ViT checkpoints: parity with a hand-written forward of that layout."""

import argparse
import logging
import math
import re

import pytest
import torch
from safetensors.torch import save_file

from sop_hf import SOPConfig, SOPModel
from sop_hf.hub.convert import convert_original_state_dict, infer_config_from_state_dict, load_original_checkpoint

TOLERANCE = 1e-5
DIM, DEPTH, HEADS, PATCH, IMAGE, MLP = 32, 2, 2, 8, 32, 128


def make_original_state_dict(
    dim: int = DIM,
    depth: int = DEPTH,
    patch: int = PATCH,
    image: int = IMAGE,
    mlp: int = MLP,
    qkv_bias: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random weights in the DINO/iBOT ``VisionTransformer`` layout, with magnitudes that make every tensor matter."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator) * scale

    def linear(prefix, out_features, in_features, bias=True):
        weights = {f"{prefix}.weight": randn(out_features, in_features, scale=1.5 / math.sqrt(in_features))}
        if bias:
            weights[f"{prefix}.bias"] = randn(out_features, scale=0.3)
        return weights

    def norm(prefix):
        return {f"{prefix}.weight": 1.0 + randn(dim, scale=0.3), f"{prefix}.bias": randn(dim, scale=0.3)}

    grid = image // patch
    state = {
        "cls_token": randn(1, 1, dim, scale=0.5),
        "pos_embed": randn(1, 1 + grid * grid, dim, scale=0.5),
        "patch_embed.proj.weight": randn(dim, 3, patch, patch, scale=1.5 / math.sqrt(3 * patch * patch)),
        "patch_embed.proj.bias": randn(dim, scale=0.3),
    }
    for i in range(depth):
        block = f"blocks.{i}"
        state |= norm(f"{block}.norm1") | linear(f"{block}.attn.qkv", 3 * dim, dim, bias=qkv_bias)
        state |= linear(f"{block}.attn.proj", dim, dim) | norm(f"{block}.norm2")
        state |= linear(f"{block}.mlp.fc1", mlp, dim) | linear(f"{block}.mlp.fc2", dim, mlp)
    return state | norm("norm")


def make_head(seed: int = 1) -> dict[str, torch.Tensor]:
    """A DINO/iBOT projection head: MLP, weight-normalised last layer."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "head.mlp.0.weight": torch.randn(48, DIM, generator=generator),
        "head.mlp.0.bias": torch.randn(48, generator=generator),
        "head.last_layer.weight_g": torch.ones(64, 1),
        "head.last_layer.weight_v": torch.randn(64, 48, generator=generator),
    }


def reference_forward(state: dict[str, torch.Tensor], images: torch.Tensor, num_heads: int, eps: float = 1e-6):
    """The original pre-norm ViT forward, written out from the layout (no SOP or transformers code).

    Returns:
        [B, 1 + L, D]: all tokens after the final norm.
    """

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]

    def linear(x, prefix):
        out = x @ state[f"{prefix}.weight"].T
        return out + state[f"{prefix}.bias"] if f"{prefix}.bias" in state else out

    def gelu(x):  # exact (erf) GELU
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    weight = state["patch_embed.proj.weight"]  # [D, C, p, p]
    dim, patch = weight.shape[0], weight.shape[-1]
    batch, channels, height, width = images.shape
    # Patchify: [B, C, H, W] -> [B, L, C*p*p] in row-major patch order, then the projection.
    patches = images.reshape(batch, channels, height // patch, patch, width // patch, patch)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch * patch)
    x = patches @ weight.reshape(dim, -1).T + state["patch_embed.proj.bias"]  # [B, L, D]
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), x], dim=1) + state["pos_embed"]  # [B, N, D]
    tokens, head_dim = x.shape[1], dim // num_heads
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    for i in range(depth):
        block = f"blocks.{i}"
        qkv = linear(layer_norm(x, f"{block}.norm1"), f"{block}.attn.qkv")  # [B, N, 3D]
        qkv = qkv.reshape(batch, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]  # [B, H, N, Dh]
        scores = query @ key.transpose(-2, -1) / math.sqrt(head_dim)  # [B, H, N, N]
        scores = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        attention = scores / scores.sum(dim=-1, keepdim=True)
        context = (attention @ value).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + linear(context, f"{block}.attn.proj")
        hidden = gelu(linear(layer_norm(x, f"{block}.norm2"), f"{block}.mlp.fc1"))
        x = x + linear(hidden, f"{block}.mlp.fc2")
    return layer_norm(x, "norm")


def max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_load_original_checkpoint__matches_the_original_forward(batch_size, qkv_bias):
    state = make_original_state_dict(qkv_bias=qkv_bias)
    model = load_original_checkpoint(state, num_attention_heads=HEADS)
    assert not model.training
    images = torch.randn(batch_size, 3, IMAGE, IMAGE)
    with torch.no_grad():
        out = model(images)
    expected = reference_forward(state, images, HEADS)
    assert max_delta(out.last_hidden_state, expected) <= TOLERANCE
    assert max_delta(out.pooler_output, expected[:, 0]) <= TOLERANCE


def test_reference_forward__is_sensitive_to_the_head_count():
    # Guards the parity test: a wrong head split would not go unnoticed.
    state = make_original_state_dict()
    images = torch.randn(2, 3, IMAGE, IMAGE)
    assert max_delta(reference_forward(state, images, 1), reference_forward(state, images, 2)) > 1e-2


def test_convert__renames_every_tensor():
    state = make_original_state_dict(depth=1)
    converted = convert_original_state_dict(state)
    assert sorted(converted) == sorted(SOPModel(_tiny(num_hidden_layers=1, use_mask_token=False)).state_dict())
    assert torch.equal(converted["layers.0.attention.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert torch.equal(converted["embeddings.position_embeddings"], state["pos_embed"])
    assert torch.equal(converted["layernorm.bias"], state["norm.bias"])


def _tiny(**overrides) -> SOPConfig:
    settings = dict(image_size=IMAGE, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH,
                    num_attention_heads=HEADS, intermediate_size=MLP, mim_loss_weight=0.0)  # fmt: skip
    return SOPConfig(**{**settings, **overrides})


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


TEACHER = make_original_state_dict(seed=0)
STUDENT = make_original_state_dict(seed=1)
TRAINING_CHECKPOINT = {
    # As DINO/iBOT main_*.py save it: DDP student, MultiCropWrapper backbone/head, arguments, epoch.
    "student": _prefixed(STUDENT, "module.backbone.") | _prefixed(make_head(), "module."),
    "teacher": _prefixed(TEACHER, "backbone.") | make_head(),
    "optimizer": {"state": {}, "param_groups": []},
    "epoch": 100,
    "args": argparse.Namespace(arch="vit_small", patch_size=PATCH),
}


@pytest.mark.parametrize(
    "checkpoint, which, expected",
    [
        (TEACHER, "teacher", TEACHER),
        (TEACHER, "student", TEACHER),  # flat weights: `which` does not apply
        ({"state_dict": _prefixed(TEACHER, "module.")}, "teacher", TEACHER),
        ({"model": _prefixed(TEACHER, "backbone.")}, "teacher", TEACHER),
        ({"state_dict": {"teacher": _prefixed(TEACHER, "module.backbone.")}}, "teacher", TEACHER),
        (TRAINING_CHECKPOINT, "teacher", TEACHER),
        (TRAINING_CHECKPOINT, "student", STUDENT),
        (_prefixed(TEACHER, "backbone.module.") | {"epoch": 3}, "teacher", TEACHER),
    ],
    ids=["flat", "flat-which-ignored", "state_dict", "model", "nested", "teacher", "student", "mixed-flat"],
)
def test_convert__nesting_and_prefix_variants(checkpoint, which, expected):
    converted = convert_original_state_dict(checkpoint, which=which)
    reference = convert_original_state_dict(expected)
    assert sorted(converted) == sorted(reference)
    assert all(torch.equal(converted[key], reference[key]) for key in reference)


def test_convert__missing_network_or_backbone_raises():
    with pytest.raises(ValueError, match="The checkpoint has no 'student' weights \\(it has 'teacher'\\)"):
        convert_original_state_dict({"teacher": TEACHER}, which="student")
    with pytest.raises(ValueError, match="which must be 'teacher' or 'student', got 'ema'"):
        convert_original_state_dict(TEACHER, which="ema")
    with pytest.raises(ValueError, match="No ViT backbone found in the checkpoint"):
        convert_original_state_dict(make_head())
    with pytest.raises(ValueError, match="Found no weights in the checkpoint"):
        convert_original_state_dict({"epoch": 3, "args": {}})


def test_convert__heads_are_ignored_and_counted(caplog):
    with caplog.at_level(logging.INFO, logger="sop_hf.hub.convert"):
        model = load_original_checkpoint(TRAINING_CHECKPOINT, which="student", num_attention_heads=HEADS)
    assert "Ignored 4 non-backbone tensors" in caplog.text
    assert not any("head" in key for key in model.state_dict())
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert max_delta(model(images).last_hidden_state, reference_forward(STUDENT, images, HEADS)) <= TOLERANCE


@pytest.mark.parametrize("name, shape", [("masked_embed", (1, DIM)), ("mask_token", (1, 1, DIM))])
def test_convert__mask_token(name, shape):
    token = torch.randn(*shape)
    state = make_original_state_dict() | {name: token}
    converted = convert_original_state_dict(state)
    assert converted["embeddings.mask_token"].shape == (1, 1, DIM)
    assert torch.equal(converted["embeddings.mask_token"].flatten(), token.flatten())
    model = load_original_checkpoint(state, num_attention_heads=HEADS)
    assert model.config.use_mask_token
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 3] = True
    with torch.no_grad():
        hidden = model.embeddings(torch.randn(1, 3, IMAGE, IMAGE), bool_masked_pos=masks)
    expected = token.flatten() + state["pos_embed"][0, 4]  # [CLS] is token 0, so patch 3 is token 4
    torch.testing.assert_close(hidden[0, 4], expected)


def test_convert__mask_token_dropped_when_the_config_has_none():
    state = make_original_state_dict() | {"masked_embed": torch.randn(1, DIM)}
    model = load_original_checkpoint(state, config=_tiny(use_mask_token=False))
    assert model.embeddings.mask_token is None


def test_convert__teacher_without_mask_token_loads_into_a_mask_token_config():
    model = load_original_checkpoint(TEACHER, config=_tiny(use_mask_token=True, mim_loss_weight=1.0))
    assert torch.equal(model.embeddings.mask_token, torch.zeros(1, 1, DIM))


def test_convert__wrong_shapes_raise_naming_the_key():
    state = make_original_state_dict()
    state["blocks.1.mlp.fc2.weight"] = torch.randn(DIM, 64)  # fc1 of block 0 says MLP width 128
    message = (
        "Shape mismatch for blocks.1.mlp.fc2.weight (-> layers.1.mlp.fc2.weight): checkpoint [32, 64] vs model "
        "[32, 128]"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        load_original_checkpoint(state, num_attention_heads=HEADS)
    message = "Shape mismatch for backbone.pos_embed (-> embeddings.position_embeddings): checkpoint [1, 17, 32] vs"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_original_checkpoint({"teacher": _prefixed(TEACHER, "backbone.")}, config=_tiny(image_size=64))
    with pytest.raises(ValueError, match=re.escape("masked_embed: expected shape [1, D] or [1, 1, D], got [2, 32]")):
        convert_original_state_dict(TEACHER | {"masked_embed": torch.randn(2, DIM)})


def test_convert__unsupported_block_weights_raise():
    state = make_original_state_dict() | {"blocks.0.gamma_1": torch.ones(DIM)}
    with pytest.raises(ValueError, match="Unsupported backbone weight 'blocks.0.gamma_1'"):
        convert_original_state_dict(state)


def test_convert__missing_weights_raise():
    state = dict(make_original_state_dict())
    del state["blocks.1.norm2.bias"]
    with pytest.raises(ValueError, match=re.escape("The checkpoint lacks 1 SOPModel weights: ['layers.1.norm2.bias']")):
        load_original_checkpoint(state, num_attention_heads=HEADS)


def test_infer_config__reads_the_sizes_from_the_shapes():
    config = infer_config_from_state_dict(make_original_state_dict(image=48, patch=8, mlp=96), num_attention_heads=4)
    assert (config.image_size, config.patch_size, config.num_channels) == (48, 8, 3)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 2, 96)
    assert config.num_attention_heads == 4
    assert config.layer_norm_eps == 1e-6 and config.hidden_act == "gelu" and config.qkv_bias
    assert config.drop_path_rate == 0.0 and not config.use_mask_token and config.mim_loss_weight == 0.0
    converted = convert_original_state_dict(make_original_state_dict(qkv_bias=False))
    assert not infer_config_from_state_dict(converted, num_attention_heads=2).qkv_bias


def test_infer_config__heads_default_to_64_dim_and_must_be_given_otherwise():
    assert infer_config_from_state_dict(make_original_state_dict(dim=128, depth=1, mlp=8)).num_attention_heads == 2
    with pytest.raises(ValueError, match="Cannot infer num_attention_heads for hidden_size=32"):
        infer_config_from_state_dict(make_original_state_dict())


def test_infer_config__non_square_position_grid_raises():
    state = make_original_state_dict()
    state["pos_embed"] = torch.randn(1, 1 + 12, DIM)
    with pytest.raises(ValueError, match="12 patch positions are not a square grid; pass image_size"):
        infer_config_from_state_dict(state, num_attention_heads=HEADS)


def test_load_original_checkpoint__config_and_overrides_are_exclusive():
    with pytest.raises(ValueError, match="Pass either config or config overrides, not both"):
        load_original_checkpoint(TEACHER, config=_tiny(), num_attention_heads=HEADS)


def test_load_original_checkpoint__files(tmp_path):
    torch.save(TRAINING_CHECKPOINT, tmp_path / "checkpoint.pth")  # pickles an argparse.Namespace
    save_file(TEACHER, tmp_path / "teacher.safetensors")
    images = torch.randn(2, 3, IMAGE, IMAGE)
    expected = reference_forward(TEACHER, images, HEADS)
    for name in ("checkpoint.pth", "teacher.safetensors"):
        model = load_original_checkpoint(tmp_path / name, num_attention_heads=HEADS)
        with torch.no_grad():
            assert max_delta(model(images).last_hidden_state, expected) <= TOLERANCE
    with pytest.raises(ValueError, match="Checkpoint file not found"):
        load_original_checkpoint(tmp_path / "missing.pth")


class _Custom:
    """A pickled object that weights_only loading refuses."""


def test_load_original_checkpoint__unsafe_pickles_need_consent(tmp_path):
    torch.save({"teacher": TEACHER, "extra": _Custom()}, tmp_path / "custom.pth")
    with pytest.raises(ValueError, match="If you trust the file, pass weights_only=False"):
        load_original_checkpoint(tmp_path / "custom.pth", num_attention_heads=HEADS)
    model = load_original_checkpoint(tmp_path / "custom.pth", weights_only=False, num_attention_heads=HEADS)
    assert isinstance(model, SOPModel)
