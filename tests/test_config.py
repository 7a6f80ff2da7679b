import ml_collections
import pytest

from reformer_jax.config import ReformerConfig


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (dict(lsh_n_buckets=7), "lsh_n_buckets"),
        (dict(lsh_n_buckets=(4, 3)), "lsh_n_buckets"),
        (dict(axial_dims=(100, 100)), "axial_dims"),
        (dict(axial_shape=(8, 8, 2)), "axial_dims"),
        (dict(n_layers=3, attention_pattern=("lsh", "local")), "n_layers"),
        (dict(attention_pattern=("lsh", "diagonal")), "attention_pattern"),  # no such kind
        (dict(attention_pattern=()), "attention_pattern"),
        (dict(hidden_dropout=1.0), "hidden_dropout"),
        (dict(ff_activation="swish"), "ff_activation"),
        (dict(dtype="int8"), "dtype"),
        (dict(d_model=0), "d_model"),
        (dict(pos_embedding="rotary"), "pos_embedding"),
        (dict(window_implementation="cuda"), "window_implementation"),
        # The Pallas window kernel's limits, for the kinds in the pattern only.
        (dict(window_implementation="pallas", lsh_chunk_len=24), "lsh_chunk_len"),
        (dict(window_implementation="pallas", d_head=8), "d_head"),
        (dict(window_implementation="pallas", lsh_dropout=0.1), "lsh_dropout"),
        (
            dict(window_implementation="pallas", attention_pattern=("local",), local_dropout=0.1),
            "local_dropout",
        ),
    ],
)
def test_invalid_settings_name_the_setting_and_the_fix(overrides, setting):
    with pytest.raises(ValueError, match=rf"model\.{setting}: .*; "):
        ReformerConfig(**overrides)


def test_pallas_limits_apply_to_the_kinds_in_the_pattern_only():
    # Catches the Pallas checks applied to a kind the model does not use (local's chunk length
    # when only LSH layers attend through the window kernel).
    cfg = ReformerConfig(window_implementation="pallas", local_chunk_len=24, local_dropout=0.1)
    assert cfg.attention_pattern == ("lsh",)


def test_from_config_dict_and_unknown_keys():
    cd = ml_collections.ConfigDict(
        dict(n_layers=4, attention_pattern=["local", "lsh"], lsh_n_buckets=[4, 8])
    )
    cfg = ReformerConfig.from_dict(cd)
    assert cfg.attention_pattern == ("local", "lsh") and cfg.lsh_n_buckets == (4, 8)
    assert cfg.layer_kinds() == ["local", "lsh", "local", "lsh"] and cfg.n_groups == 2
    with pytest.raises(ValueError, match="unknown model setting.*n_layer"):
        ReformerConfig.from_dict({"n_layer": 3})
    with pytest.raises(AttributeError):
        cfg.n_layers = 3  # frozen


def test_length_capacity_error():
    cfg = ReformerConfig(axial_shape=(4, 8), axial_dims=(128, 128))
    cfg.check_length(32)
    with pytest.raises(ValueError, match="axial_shape"):
        cfg.check_length(33)
