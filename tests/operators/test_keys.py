"""Operator keys declared once (``key_spec``): run, input/output columns and the compile check come from it;
an operator written the older way (its own ``run`` calling ``execute``) still works; missing optional
dependencies stop at construction (the operator's own) or at compile (its serving's), before any step writes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd
import pytest

from dataflow_mm import FileStorage, KeySpec, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.errors import MissingDependencyError, PipelineCompileError
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.operators.imgdiff.step4_similarity_filter import ImgDiffCaptionSimilarityFilter
from dataflow_mm.storage.formats import read_table
from dataflow_mm.storage.table_writer import write_table
from tests.support.fake_serving import FakeVLMServing


class Upper(OperatorABC):
    """The README's example: keys declared once, a pure batch transform."""

    key_spec = KeySpec(
        defaults={"input_key": "text", "output_key": "upper"}, reads=("input_key",), writes=("output_key",)
    )

    def process(
        self, frame: pd.DataFrame, input_key: str = "text", output_key: str = "upper", **_: object
    ) -> pd.DataFrame:
        out = frame.copy()
        out[output_key] = [str(v).upper() for v in out[input_key]]
        return out


class OldStyleUpper(OperatorABC):
    """An operator written the way the README showed before key_spec: its own run and column methods."""

    def run(self, storage: FileStorage, input_key: str = "text", output_key: str = "upper") -> None:
        self.execute(storage, input_key=input_key, output_key=output_key)

    def input_columns(self, input_key: str = "text", **_: object) -> list[str]:
        return [input_key]

    def output_columns(self, output_key: str = "upper", **_: object) -> list[str]:
        return [output_key]

    def process(
        self, frame: pd.DataFrame, input_key: str = "text", output_key: str = "upper", **_: object
    ) -> pd.DataFrame:
        out = frame.copy()
        out[output_key] = [str(v).upper() for v in out[input_key]]
        return out


class NoKeys(OperatorABC):
    def process(self, frame: pd.DataFrame, **_: object) -> pd.DataFrame:
        return frame


class Twice(PipelineABC):
    def __init__(self, table: Path, cache: Path, first: OperatorABC, second: OperatorABC, key: str = "text") -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="k", chunk_size=2)
        self.first, self.second, self.key = first, second, key

    def forward(self) -> None:
        self.first.run(self.storage.step(), input_key=self.key, output_key="upper")
        self.second.run(self.storage.step(), input_key="upper", output_key="again")


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_table(pd.DataFrame({"text": ["a", "b", "c"]}), tmp_path / "in.jsonl")


def test_spec_builds_run_and_columns(tmp_path: Path, table: Path) -> None:
    op = Upper()
    assert op.input_columns(input_key="title") == ["title"] and op.output_columns() == ["upper"]
    assert list(inspect.signature(Upper.run).parameters) == ["self", "storage", "input_key", "output_key"]
    Twice(table, tmp_path / "cache", Upper(), OldStyleUpper()).run()
    out = read_table(tmp_path / "cache" / "k_step2.jsonl").frame
    assert out["upper"].tolist() == ["A", "B", "C"] and out["again"].tolist() == ["A", "B", "C"]


def test_spec_keys_are_checked_by_compile_and_by_run(tmp_path: Path, table: Path) -> None:
    with pytest.raises(PipelineCompileError, match=r"input key 'txet'.*Did you mean 'text'"):
        Twice(table, tmp_path / "cache", Upper(), Upper(), key="txet").compile()
    with pytest.raises(TypeError, match="unexpected key 'input_column'; its keys: input_key, output_key"):
        Upper().run(FileStorage(str(table), cache_path=str(tmp_path / "c2")).step(), input_column="text")


def test_an_operator_without_keys_says_what_to_change(tmp_path: Path, table: Path) -> None:
    with pytest.raises(TypeError, match=r"key_spec = KeySpec.*or define run"):
        NoKeys().run(FileStorage(str(table), cache_path=str(tmp_path / "cache")).step())


def test_converted_operator_records_every_key_with_its_default(tmp_path: Path, table: Path) -> None:
    class Filter(PipelineABC):
        def __init__(self) -> None:
            self.storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"))
            self.op = ImgDiffCaptionSimilarityFilter.__new__(ImgDiffCaptionSimilarityFilter)

        def forward(self) -> None:
            self.op.run(self.storage.step())

    with pytest.raises(PipelineCompileError, match="input key 'bbox_decisions'"):
        Filter().compile()  # the key the old hand-written run passed, with the same default


class NeedsMissingModule(Upper):
    requires = (("dataflow_mm_no_such_module", "scoring"),)


class MissingBackendServing(FakeVLMServing):
    requires = (("dataflow_mm_no_such_backend", "vllm"),)


def test_missing_dependencies_stop_before_any_step_writes(tmp_path: Path, table: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"dataflow-mm\[scoring\]"):
        NeedsMissingModule()

    class Captions(PipelineABC):
        def __init__(self) -> None:
            self.storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"))
            self.upper = Upper()
            self.vqa = PromptedVQAGenerator(MissingBackendServing())  # may be built (e.g. to plan GPUs) ...

        def forward(self) -> None:
            self.upper.run(self.storage.step())
            self.vqa.run(self.storage.step(), input_prompt_key="upper", input_image_key=None)

    with pytest.raises(MissingDependencyError, match=r"dataflow_mm_no_such_backend.*dataflow-mm\[vllm\]"):
        Captions().run()  # ... but compile stops the run before step 1 writes anything
    assert not list((tmp_path / "cache").glob("*step*"))


def test_prompted_vqa_run_is_built_from_its_key_spec_in_dataflow_mm_order(tmp_path: Path, table: Path) -> None:
    from dataflow_mm.common.errors import UnsupportedArgumentError
    from dataflow_mm.core.dispatch import recording_calls

    assert PromptedVQAGenerator.run.__qualname__.startswith("spec_run")  # built from key_spec, not hand-written
    names = list(inspect.signature(PromptedVQAGenerator.run).parameters)
    assert names == [
        "self",
        "storage",
        "input_prompt_key",
        "input_image_key",
        "input_conversation_key",
        "output_answer_key",
        "input_video_key",
        "input_audio_key",
    ]
    op = PromptedVQAGenerator(FakeVLMServing())
    storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"))
    with recording_calls() as calls:
        op.run(storage.step(), "text", None, None, "reply", None)  # DataFlow-MM's positional call
    # the unsupported keys are never passed on (the step's resume fingerprint hashes these keys)
    assert calls[0].keys == {
        "input_prompt_key": "text",
        "input_image_key": None,
        "input_conversation_key": None,
        "output_answer_key": "reply",
    }
    with pytest.raises(UnsupportedArgumentError, match=r"run\(input_audio_key='a.wav'\).*Remove input_audio_key"):
        op.run(storage.step(), "text", None, None, "reply", None, "a.wav")


def test_key_spec_unsupported_keys_must_have_a_default() -> None:
    with pytest.raises(TypeError, match="without a default: \\['input_video_key'\\]"):
        KeySpec(defaults={"input_key": "text"}, unsupported={"input_video_key": "no video"})


def test_no_operator_repeats_its_key_defaults_in_process() -> None:
    """``process(frame, **keys)`` reads its columns through ``key_values``: the defaults live in key_spec only."""
    from dataflow_mm.operators.registry import operator_classes

    for name, cls in operator_classes().items():
        if cls.key_spec is None:
            continue
        repeated = set(inspect.signature(cls.process).parameters) & set(cls.key_spec.defaults)
        assert not repeated, (
            f"{name}.process repeats {sorted(repeated)}: their defaults live in key_spec only. Write "
            "process(self, frame, **keys) and read the columns from keys = self.key_values(keys)"
        )
    assert Upper().key_values({"output_key": "shout"}) == {"input_key": "text", "output_key": "shout"}
