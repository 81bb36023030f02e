"""Every configuration dataclass validates itself, and a preset validates all of its parts."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import replace

import pytest

from tauml import config as config_module
from tauml.config import ConfigError, DeepSetConfig, ParTBaselineConfig, get_preset


def _config_classes() -> list[type]:
    return [obj for _, obj in inspect.getmembers(config_module, inspect.isclass)
            if dataclasses.is_dataclass(obj) and obj.__module__ == config_module.__name__]


def test_every_configuration_dataclass_has_validate():
    classes = _config_classes()
    assert len(classes) >= 12
    missing = [cls.__name__ for cls in classes if not callable(getattr(cls, "validate", None))]
    assert missing == []


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_the_presets_are_valid(name):
    preset = get_preset(name)
    for field in dataclasses.fields(preset):
        value = getattr(preset, field.name)
        if dataclasses.is_dataclass(value):
            value.validate()


@pytest.mark.parametrize(("bad", "phrase"), [
    (ParTBaselineConfig(num_heads=3), "num_heads=3"),
    (ParTBaselineConfig(embed_dims=()), "embed_dims"),
    (ParTBaselineConfig(dropout=1.5), "dropout"),
    (DeepSetConfig(width=0), "width=0"),
    (DeepSetConfig(dropout=-0.1), "dropout"),
])
def test_baseline_settings_that_cannot_work_are_refused(bad, phrase):
    with pytest.raises(ConfigError, match=phrase):
        bad.validate()


def test_a_preset_validates_its_baselines_too():
    preset = replace(get_preset("demo"), deepset=DeepSetConfig(n_jet_layers=0))
    with pytest.raises(ConfigError, match="n_jet_layers=0"):
        preset.validate()


def test_the_paper_preset_never_starts_generating_by_itself(monkeypatch, tmp_path):
    from tauml import pipeline

    monkeypatch.setenv("TAUML_CACHE_DIR", str(tmp_path))
    assert get_preset("paper").data == "files" and get_preset("demo").data == "generated"
    monkeypatch.setenv("TAUML_DATA_DIR", str(tmp_path / "downloads"))
    with pytest.raises(pipeline.DataError, match=r"tauml fetch.*--data generated \(about \d+ core-hours"):
        pipeline.dataset("paper")
    assert not (tmp_path / "data").exists()  # nothing was started or created
    assert 20 < pipeline.generation_core_hours("paper") < 100


def test_an_unknown_data_source_is_refused():
    with pytest.raises(ConfigError, match="data='somewhere': somewhere does not exist"):
        replace(get_preset("demo"), data="somewhere").validate()
    with pytest.raises(ConfigError, match="data=''"):
        replace(get_preset("demo"), data="").validate()
    with pytest.raises(ConfigError, match="pp_jets_per_sample=-1"):
        replace(get_preset("demo"), pp_jets_per_sample=-1).validate()


def test_an_added_setting_keeps_old_cache_keys_until_it_is_changed():
    """A setting declared with added_setting is left out of the hash at its default, so caches stay valid."""
    from dataclasses import dataclass

    from tauml.config import added_setting, config_hash, identity_dict

    @dataclass(frozen=True)
    class Before:
        width: int = 64

    @dataclass(frozen=True)
    class After:
        width: int = 64
        inputs: str = added_setting("tokens")

    assert identity_dict(After()) == {"width": 64}
    assert config_hash(Before()) == config_hash(After())
    assert config_hash(After(inputs="continuous")) != config_hash(Before())
