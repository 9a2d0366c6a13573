"""Files carry their schema: config.json and the model card (in checkpoints and ONNX metadata)
of every schema up to today's load, fixtures of each written by the cifarcli of that schema;
a newer schema is refused in one line."""

import json
import shutil
from pathlib import Path

import pytest

from cifarcli.checkpoint import MODEL_CARD_SCHEMA, ModelInfo
from cifarcli.errors import CifarError
from cifarcli.models import get_model_entry
from cifarcli.run_folder import CONFIG, CONFIG_SCHEMA, RunFolder

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def run_folder_with(config: str, tmp_path) -> RunFolder:
    shutil.copy(FIXTURES / config, tmp_path / CONFIG)
    return RunFolder(tmp_path)


@pytest.mark.parametrize(("name", "crops"), [("config.schema1.json", [[24, 5]]), ("config.schema2.json", [[24, 0.5]])])
def test_run_configs_of_every_schema_read_as_todays(name, crops, tmp_path):
    config = run_folder_with(name, tmp_path).read_config()
    assert config["schema"] == CONFIG_SCHEMA and config["recipe"]["crops"] == crops
    recipe = get_model_entry(config["model"]).recipe.override(**config["recipe"])  # what --resume rebuilds
    assert recipe.crops == tuple((size, float(epochs)) for size, epochs in crops)
    assert recipe.balance == "none"  # what a run without the field trained with, not today's auto


@pytest.mark.parametrize(("name", "crops"), [("card.schema1.json", [[24, 5]]), ("card.schema2.json", [[24, 0.5]])])
def test_model_cards_of_every_schema_read_as_todays(name, crops):
    info = ModelInfo.from_dict(json.loads((FIXTURES / name).read_text()), name)
    assert info.schema == MODEL_CARD_SCHEMA and info.recipe["crops"] == crops and info.recipe["balance"] == "none"
    get_model_entry(info.model).recipe.override(**info.recipe)
    assert ModelInfo.from_dict(info.to_dict(), "again") == info  # today's form reads back unchanged


def test_the_bundled_models_cards_are_in_todays_schema():
    import onnx

    from cifarcli.bundled import MODELS as BUNDLED_MODELS
    from cifarcli.onnx_model import CARD_KEY

    for path in BUNDLED_MODELS.values():
        model = onnx.load(str(path), load_external_data=False)
        card = json.loads(next(prop.value for prop in model.metadata_props if prop.key == CARD_KEY))
        assert card["schema"] == MODEL_CARD_SCHEMA and "small_crop" not in card["recipe"], path.name


def test_a_newer_schema_is_refused_in_one_line(tmp_path):
    card = {**json.loads((FIXTURES / "card.schema2.json").read_text()), "schema": MODEL_CARD_SCHEMA + 1}
    with pytest.raises(CifarError, match=f"model card has schema {MODEL_CARD_SCHEMA + 1}, newer than this cifarcli"):
        ModelInfo.from_dict(card, "future.onnx")
    folder = run_folder_with("config.schema2.json", tmp_path)
    config = json.loads(folder.file(CONFIG).read_text())
    folder.file(CONFIG).write_text(json.dumps({**config, "schema": CONFIG_SCHEMA + 1}))
    with pytest.raises(CifarError, match="newer than this cifarcli"):
        folder.read_config()
    with pytest.raises(CifarError, match="malformed schema '2'"):
        ModelInfo.from_dict({**card, "schema": "2"}, "odd.onnx")
