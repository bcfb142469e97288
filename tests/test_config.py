"""Config loading, validation errors and round trips."""

from pathlib import Path

import pytest
import yaml

from echostream.config import (
    ConfigError,
    EchoStreamConfig,
    EmformerConfig,
    load_config,
    save_config,
    validate_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "fr-en"


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_reference_configs_have_the_plans_values():
    echo = load_config(CONFIGS / "config_echostream.yaml")
    em = echo.encoder.emformer
    assert (echo.model, echo.encoder.type) == ("echostream", "emformer")
    assert (em.num_layers, em.d_model, em.num_heads, em.ffn_dim) == (16, 256, 4, 2048)
    assert (em.segment_length, em.left_context_length) == (4, 30)
    assert (em.right_context_length, em.memory_size) == (0, 8)
    base = load_config(CONFIGS / "config_streamspeech.yaml")
    co = base.encoder.conformer
    assert (base.model, base.encoder.type) == ("streamspeech", "conformer")
    assert (co.num_layers, co.d_model, co.num_heads, co.ffn_dim) == (12, 256, 4, 2048)
    assert (co.conv_kernel_size, co.chunk_size) == (31, 8)
    for cfg in (echo, base):
        assert (cfg.mt_decoder.num_layers, cfg.mt_decoder.d_model) == (4, 512)
        assert (cfg.t2u_encoder.num_layers, cfg.unit_decoder.num_layers) == (2, 2)
        assert cfg.unit_decoder.upsample_rate == 25 and cfg.vocab.num_units == 1000
        assert (cfg.loss.mt_ce_weight, cfg.loss.asr_ctc_weight) == (8.0, 4.0)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_round_trips(tmp_path, name):
    cfg = load_config(CONFIGS / name)
    save_config(cfg, tmp_path / name)
    assert load_config(tmp_path / name) == cfg


def test_partial_config_takes_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, {"encoder": {"emformer": {"num_layers": 2}}}))
    assert cfg.encoder.emformer.num_layers == 2
    assert cfg.encoder.emformer.segment_length == EmformerConfig().segment_length


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"encoder": {"emformer": {"segment_length": 0}}},
            "encoder.emformer.segment_length: must be >= 1, got 0",
        ),
        (
            {"encoder": {"emformer": {"segmnt_length": 4}}},
            "encoder.emformer.segmnt_length: unknown key",
        ),
        (
            {"encoder": {"emformer": {"num_layers": "16"}}},
            "encoder.emformer.num_layers: expected an integer, got '16'",
        ),
        (
            {"encoder": {"emformer": {"num_layers": True}}},
            "encoder.emformer.num_layers: expected an integer",
        ),
        (
            {"encoder": {"emformer": {"num_heads": 3}}},
            "encoder.emformer.num_heads: must divide d_model=256, got 3",
        ),
        ({"encoder": {"type": "lstm"}}, "encoder.type: must be one of"),
        (
            {"encoder": {"conformer": {"conv_kernel_size": 30}}},
            "encoder.conformer.conv_kernel_size: must be an odd number",
        ),
        ({"model": "streamspeech"}, "encoder.type: model 'streamspeech' needs encoder type"),
        ({"features": 3}, "features: expected a mapping"),
        ({"encoder": {"emformer": {"dropout": 1.5}}}, "encoder.emformer.dropout: must be in"),
        (
            {"unit_decoder": {"attention_dropout": 1.0}},
            "unit_decoder.attention_dropout: must be in",
        ),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, data, expected):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "encoder: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_validate_config_built_in_code():
    cfg = EchoStreamConfig()
    cfg.encoder.emformer.memory_size = -1
    with pytest.raises(ConfigError, match=r"encoder\.emformer\.memory_size: must be >= 0"):
        validate_config(cfg)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    cfg = load_config(
        _write(
            tmp_path,
            {"vocab": {"src_spm": "spm/src.model"}, "features": {"cmvn_path": "cmvn.json"}},
        )
    )
    assert cfg.vocab.src_spm == str(tmp_path / "spm" / "src.model")
    assert cfg.features.cmvn_path == str(tmp_path / "cmvn.json")
