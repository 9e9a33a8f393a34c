"""Each serving setting is declared once (``ServingSettings``): the scripts' flags are generated from its
fields under the same names, and the factory builds a serving from it without renaming anything."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from dataflow_mm.common.errors import UserError
from dataflow_mm.pipeline.script import add_serving_args, serving_from_args
from dataflow_mm.serving.factory import create_serving
from dataflow_mm.serving.settings import ServingSettings


def script_parser(default_model: str = "Org/Default-VL") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_serving_args(parser, default_model=default_model)
    return parser


def test_every_setting_with_a_help_text_is_a_flag_of_the_same_name_and_default() -> None:
    args = script_parser().parse_args([])
    for item in dataclasses.fields(ServingSettings):
        if item.metadata["help"] is None:
            assert not hasattr(args, item.name), item.name
            continue
        expected = "Org/Default-VL" if item.name == "model_path" else item.default
        assert getattr(args, item.name) == expected, item.name


def test_flags_parse_into_settings_with_their_types() -> None:
    flags = "--backend api --max_tokens 64 --temperature 0 --seed 7 --allow_downscale --api_url http://127.0.0.1:9/v1"
    args = script_parser().parse_args([*flags.split(), "--enforce_eager", "no", "--api_max_response_mb", "0.5"])
    settings = ServingSettings.from_args(args, allow_tiny_fallback=False)
    assert (settings.backend, settings.max_tokens, settings.temperature, settings.seed) == ("api", 64, 0.0, 7)
    assert settings.allow_downscale is True and settings.eager is False and settings.allow_tiny_fallback is False
    assert settings.api_max_response_bytes == 2**19
    with pytest.raises(SystemExit):
        script_parser().parse_args(["--backend", "tpu"])


def test_the_api_serving_gets_the_settings_as_they_are() -> None:
    flags = "--backend api --api_url http://127.0.0.1:9/v1 --max_workers 3 --api_timeout 5 --api_max_retries 1"
    args = script_parser().parse_args([*flags.split(), "--max_tokens", "16", "--api_max_response_mb", "1"])
    serving = serving_from_args(args)
    assert serving.describe()["model"] == "Org/Default-VL"
    assert (serving.max_workers, serving.retry.max_retries, serving.max_response_bytes) == (3, 1, 2**20)
    assert serving.timeout == 5.0


def test_the_shorthand_takes_settings_by_name_and_passes_the_rest_to_the_serving(tiny_qwen_dir: Path) -> None:
    serving = create_serving("hf", str(tiny_qwen_dir), max_tokens=3, batch_size=2, device="cpu")
    assert (serving.batch_size, serving.device) == (2, "cpu")
    with pytest.raises(UserError, match="Unknown backend"):
        create_serving("tpu", "x")
    with pytest.raises(UserError, match="needs --api_url"):
        create_serving(ServingSettings(backend="api"))
