import pytest

from sop_hf import PRESETS, SOPConfig
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "name,width,depth,heads",
    [("vit_tiny", 192, 12, 3), ("vit_small", 384, 12, 6), ("vit_base", 768, 12, 12), ("vit_large", 1024, 24, 16)],
)
def test_from_preset__sizes(name, width, depth, heads):
    config = SOPConfig.from_preset(name)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, depth, heads)
    assert config.patch_size == 16 and config.intermediate_size == 4 * width


def test_from_preset__overrides_and_unknown_name():
    assert SOPConfig.from_preset("vit_small", class_memory_size=16384).class_memory_size == 16384
    with pytest.raises(ValueError, match="Unknown SOP preset 'vit_huge'"):
        SOPConfig.from_preset("vit_huge")
    assert set(PRESETS) == {"vit_tiny", "vit_small", "vit_base", "vit_large"}


def test_defaults__paper_scale():
    config = SOPConfig()
    assert (config.class_memory_size, config.patch_memory_size, config.num_support, config.num_tasks) == (
        65536, 8192, 9, 4,
    )  # fmt: skip
    assert (config.vote_smoothing, config.student_temp, config.teacher_temp) == (0.1, 0.1, 0.04)
    assert config.teacher_patch_temp == config.teacher_temp  # not the reference's unused 0.07
    assert config.num_kept_anchors == 2048 and config.layer_norm_eps == 1e-6


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("hidden_size", 0, r"SOPConfig.hidden_size must be an integer >= 1, got 0"),
        ("num_support", 0, r"SOPConfig.num_support must be an integer >= 1"),
        ("drop_path_rate", 1.5, r"SOPConfig.drop_path_rate must be in \[0.0, 1.0\], got 1.5"),
        ("vote_smoothing", -0.1, r"SOPConfig.vote_smoothing must be in \[0.0, 1.0\]"),
        ("teacher_temp", 0.0, r"SOPConfig.teacher_temp must be a finite number > 0"),
        ("teacher_temp", float("nan"), r"SOPConfig.teacher_temp must be a finite number > 0, got nan"),
        ("student_temp", float("inf"), r"SOPConfig.student_temp must be a finite number > 0, got inf"),
        ("koleo_loss_weight", float("nan"), r"SOPConfig.koleo_loss_weight must be a finite number >= 0, got nan"),
        ("drop_path_rate", float("nan"), r"SOPConfig.drop_path_rate must be in \[0.0, 1.0\], got nan"),
        ("hidden_act", "swishy", r"SOPConfig.hidden_act must be one of transformers' activations .* got 'swishy'"),
        ("num_attention_heads", 3, r"hidden_size \(32\) must be divisible by num_attention_heads \(3\)"),
        ("image_size", 30, r"image_size \(30\) must be a multiple of patch_size \(8\)"),
        ("num_anchors", 64, r"SOPConfig.num_anchors must be in \[2, class_memory_size - 1\] = \[2, 63\]"),
        ("num_support", 60, r"SOPConfig.num_support must be in \[1, class_memory_size - num_anchors \+ 1\]"),
        ("anchor_keep_fraction", 0.1, r"SOPConfig.anchor_keep_fraction keeps 0 of num_anchors=8"),
        ("num_patch_anchors", 33, r"SOPConfig.num_patch_anchors must be in \[2, patch_memory_size\]"),
        ("mim_loss_weight", -1.0, r"SOPConfig.mim_loss_weight must be a finite number >= 0"),
    ],
)
def test_config__invalid_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


def test_config__mim_needs_mask_token():
    with pytest.raises(
        ValueError,
        match=r"use_mask_token must be True \(or None\) when mim_loss_weight > 0 .*got "
        r"use_mask_token=False with mim_loss_weight=1.0",
    ):
        tiny_config(use_mask_token=False, mim_loss_weight=1.0)
    assert tiny_config(use_mask_token=False, mim_loss_weight=0.0).use_mask_token is False
    with pytest.raises(ValueError, match="SOPConfig.use_mask_token must be True, False or None, got 'yes'"):
        tiny_config(use_mask_token="yes")


def test_config__positive_mim_weight_alone_brings_the_mask_token():
    assert tiny_config(mim_loss_weight=1.0).use_mask_token is True  # one switch turns SOP-MIM on
    assert tiny_config(mim_loss_weight=0.0).use_mask_token is False  # off: no unused parameter for DDP
    assert tiny_config(mim_loss_weight=0.0, use_mask_token=True).use_mask_token is True  # kept when asked for
    assert SOPConfig().use_mask_token is True  # the default config runs SOP-MIM


def test_config__save_load_round_trip(tmp_path):
    config = tiny_config(drop_path_rate=0.2, teacher_patch_temp=0.05)
    config.save_pretrained(tmp_path)
    loaded = SOPConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.model_type == "sop"


def test_config__no_generation_parameter_names():
    generation_names = {"temperature", "top_k", "top_p", "max_length", "num_beams", "do_sample", "min_length"}
    assert not generation_names & set(SOPConfig().to_dict())


def test_config__unknown_keys_are_kept_and_a_near_typo_is_named(caplog):
    with caplog.at_level("WARNING", logger="sop_hf.configuration_sop"):
        config = tiny_config(num_anchor=8, zzz=1)
    assert config.num_anchor == 8 and config.zzz == 1  # kept, as PreTrainedConfig does
    expected = "SOPConfig got unknown field(s) 'num_anchor' (did you mean 'num_anchors'?); kept as attributes"
    assert expected in caplog.text
    assert "zzz" not in caplog.text  # no field is close: a newer version's field, kept silently
    # what transformers passes to every config (its common tests set these) loads, and survives a round trip
    config = tiny_config(rms_norm_eps=1.0, batch_norm_eps=1.0, tie_word_embeddings=False)
    assert config.rms_norm_eps == 1.0 and config.layer_norm_eps == 1e-6
    assert SOPConfig.from_dict(config.to_dict()).batch_norm_eps == 1.0
    # what every transformers config takes (Hub metadata, older names) still loads
    config = tiny_config(torch_dtype="float32", num_labels=3, transformers_version="5.0.0", _name_or_path="x")
    assert config.num_labels == 3


def test_config__known_fields_stay_validated_beside_unknown_keys():
    with pytest.raises(ValueError, match=r"SOPConfig.layer_norm_eps must be in \(0.0, 1.0\], got 0"):
        tiny_config(layer_norm_eps=0, rms_norm_eps=1.0)


def test_config__a_newer_config_json_loads(tmp_path):
    import json

    tiny_config().save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "a_field_from_the_future": [1, 2]}))
    assert SOPConfig.from_pretrained(tmp_path).a_field_from_the_future == [1, 2]


def test_build_config__mim_override_alone_turns_sop_mim_on():
    from sop_hf.methods import build_config, get_method

    saved = {**get_method("sop").recipes["demo"]["model"], "use_mask_token": False}  # e.g. a demo run's config.json
    config = build_config("sop", saved, {"mim_loss_weight": 1.0})
    assert config.mim_loss_weight == 1.0 and config.use_mask_token is True
    assert build_config("sop", get_method("sop").recipes["demo"]["model"]).use_mask_token is False  # SOP-MIM off
    with pytest.raises(ValueError, match="use_mask_token must be True"):  # both overridden: the user's word stands
        build_config("sop", saved, {"mim_loss_weight": 1.0, "use_mask_token": False})
    with pytest.raises(ValueError, match=r"--method sop: unknown SOPConfig field\(s\) mim_weight"):
        build_config("sop", saved, {"mim_weight": 1.0})


def test_lineage_config__keeps_unknown_keys_and_names_a_near_typo(caplog):
    from sop_hf.methods import CARPConfig

    with caplog.at_level("WARNING", logger="sop_hf.configuration_sop"):
        config = CARPConfig(num_prototype=64, rms_norm_eps=1.0)
    assert config.num_prototype == 64 and config.rms_norm_eps == 1.0
    assert "CARPConfig got unknown field(s) 'num_prototype' (did you mean 'num_prototypes'?)" in caplog.text
