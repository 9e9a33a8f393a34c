"""DataFlow-MM's import paths each name a class dataflow_mm offers under the name its scripts use."""

from __future__ import annotations

import dataflow_mm
from dataflow_mm.compat import DATAFLOW_MM_IMPORTS, LLMServingABC
from dataflow_mm.serving.base import VLMServing


def test_every_dataflow_mm_import_path_resolves_to_a_class_of_the_same_name() -> None:
    for path, name in DATAFLOW_MM_IMPORTS.items():
        assert path.rsplit(".", 1)[1] == name, path
        assert isinstance(getattr(dataflow_mm, name), type), path


def test_the_serving_base_answers_to_dataflow_mm_s_name() -> None:
    assert LLMServingABC is VLMServing is dataflow_mm.LLMServingABC


def test_a_seed_style_import_block_works_with_only_the_module_changed() -> None:
    namespace: dict[str, object] = {}
    exec(  # the seed's imports, with `dataflow...` replaced by `dataflow_mm`
        "from dataflow_mm import LocalModelVLMServing_vllm\n"
        "from dataflow_mm import ImageBboxGenerator, ExistingBBoxDataGenConfig\n"
        "from dataflow_mm import PromptedVQAGenerator\n"
        "from dataflow_mm import FileStorage\n",
        namespace,
    )
    assert {"LocalModelVLMServing_vllm", "ImageBboxGenerator", "ExistingBBoxDataGenConfig", "FileStorage"} <= set(
        namespace
    )
