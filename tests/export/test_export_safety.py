"""`dataflowmm export` into folders users keep (issue 24 items 2, 15, 17 and the LLaVA image type).

* an existing ``dataset_info.json`` (LLaMA-Factory's real shape, several entries) is merged, never
  replaced; an existing data file is never overwritten without ``--overwrite``; ``--out`` that is a
  file is one line and exit 2;
* relative image paths resolve against the run's working folder (recorded in the manifest), and a
  step whose rows all lost their images stops with exit 2 instead of exporting 0 samples;
* a model's ``<image>`` / ``<video>`` / ``<audio>`` never reaches a sample: in every format the number
  of placeholders equals the number of images;
* ``image`` has one type in every LLaVA sample, so ``datasets`` loads both pipelines' exports together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dataflow_mm.cli.main import main as cli_main
from dataflow_mm.export import export_run
from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.fake_serving import RegionAnswers
from tests.support.sample_data import write_jsonl, write_region_caption_table

datasets = pytest.importorskip("datasets")

# The placeholders LLaVA and LLaMA-Factory count (LLaMA-Factory's IMAGE/VIDEO/AUDIO_PLACEHOLDER defaults).
PLACEHOLDERS = ("<image>", "<video>", "<audio>")


def placeholder_count(text: str) -> int:
    return sum(text.count(token) for token in PLACEHOLDERS)


# The shape of LLaMA-Factory's data/dataset_info.json (hiyouga/LLaMA-Factory): local files, hub
# datasets, ShareGPT with tags, multimodal columns, ranking data, in the order the file has them.
LLAMA_FACTORY_INFO: dict[str, Any] = {
    "identity": {"file_name": "identity.json"},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "mllm_demo": {
        "file_name": "mllm_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
    "dpo_en_demo": {
        "file_name": "dpo_en_demo.json",
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
}


def run_region_pipeline(table: Path, cache: Path) -> Path:
    pipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline(
        RegionAnswers(lambda k: f"<image> a thing {k} <video><audio>"),  # media placeholders a model may echo
        first_entry_file=str(table),
        cache_path=str(cache),
        output_image_with_bbox_path=None,
    )
    pipeline.run()
    return cache


@pytest.fixture(scope="module")
def region_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("region")
    return run_region_pipeline(
        write_region_caption_table(tmp / "imgs", n_rows=3, size=(160, 120), n_boxes=2), tmp / "c"
    )


@pytest.fixture
def imgdiff_step(tmp_path: Path) -> Path:
    """An Img-Diff last step: one pair with a kept box whose caption echoes placeholders."""
    for name, color in (("a.jpg", (200, 0, 0)), ("b.jpg", (0, 0, 200))):
        Image.new("RGB", (200, 150), color).save(tmp_path / name)
    decision = {"index": 0, "bbox_xyxy": [10, 20, 60, 80], "kept": True, "difference_caption": "<image> turned <audio>"}
    row = {"id": "p", "image_path1": str(tmp_path / "a.jpg"), "image_path2": str(tmp_path / "b.jpg")}
    return write_jsonl(tmp_path / "imgdiff_step5.jsonl", [{**row, "error": None, "bbox_decisions": [decision]}])


def read_info(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def llama_factory_samples(dataset_dir: Path, name: str) -> list[dict[str, Any]]:
    """What LLaMA-Factory's loader reads for ``--dataset_dir DIR --dataset NAME`` (data/parser.py's
    ``get_dataset_list``: the entry's ``file_name``, ``formatting`` and ``columns``), loaded with ``datasets``."""
    entry = read_info(dataset_dir / "dataset_info.json")[name]
    assert entry["formatting"] == "sharegpt"
    columns = entry["columns"]
    data = datasets.load_dataset("json", data_files=str(dataset_dir / entry["file_name"]), split="train")
    return [{"messages": r[columns["messages"]], "images": r[columns["images"]]} for r in data]


# ---------------------------------------------------------------- item 2: never replace the user's files


def test_dataset_info_is_merged_into_a_real_shaped_registry(region_run: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "LLaMA-Factory" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "dataset_info.json").write_text(json.dumps(LLAMA_FACTORY_INFO, indent=2))
    (data_dir / "identity.json").write_text("[]")
    assert cli_main(["export", str(region_run), "--format", "sharegpt", "--out", str(data_dir)]) == 0
    assert (
        cli_main(
            ["export", str(region_run), "--format", "sharegpt", "--out", str(data_dir), "--dataset_name", "regions_v2"]
        )
        == 0
    )
    info = read_info(data_dir / "dataset_info.json")
    assert list(info) == [*LLAMA_FACTORY_INFO, "dataflow_mm", "regions_v2"]  # every entry kept, in order
    assert {k: info[k] for k in LLAMA_FACTORY_INFO} == LLAMA_FACTORY_INFO
    assert info["dataflow_mm"]["file_name"] == "sharegpt.json" and info["regions_v2"]["file_name"] == "regions_v2.json"
    assert (data_dir / "identity.json").read_text() == "[]"
    for name in ("dataflow_mm", "regions_v2"):
        samples = llama_factory_samples(data_dir, name)
        assert len(samples) == 3 and all(len(s["images"]) == 1 for s in samples)


def test_an_existing_data_file_is_never_overwritten_without_overwrite(
    region_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("sharegpt.json", "llava.json", "messages.jsonl"):
        (out / name).write_text("users own data\n")
    for fmt, name in (("sharegpt", "sharegpt.json"), ("llava", "llava.json"), ("jsonl-messages", "messages.jsonl")):
        assert cli_main(["export", str(region_run), "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out / name) in err and "--overwrite" in err
        assert (out / name).read_text() == "users own data\n"
    assert sorted(p.name for p in out.iterdir()) == ["llava.json", "messages.jsonl", "sharegpt.json"]  # nothing else
    assert cli_main(["export", str(region_run), "--format", "llava", "--out", str(out), "--overwrite"]) == 0
    assert len(json.loads((out / "llava.json").read_text())) == 3


def test_a_zero_sample_export_replaces_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    step = write_jsonl(
        tmp_path / "x_step3.jsonl", [{"image": "a.jpg", "region_captions": [], "error": "ServingError: x"}]
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps(LLAMA_FACTORY_INFO))
    (out / "sharegpt.json").write_text("[1]")
    assert cli_main(["export", str(step), "--format", "sharegpt", "--out", str(out)]) == 2
    assert read_info(out / "dataset_info.json") == LLAMA_FACTORY_INFO and (out / "sharegpt.json").read_text() == "[1]"


def test_a_registered_name_is_never_taken_over_silently(region_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps(LLAMA_FACTORY_INFO))
    argv = ["export", str(region_run), "--format", "sharegpt", "--out", str(out), "--dataset_name", "mllm_demo"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "'mllm_demo'" in err and "mllm_demo.json" in err and err.count("\n") == 1
    assert read_info(out / "dataset_info.json") == LLAMA_FACTORY_INFO and not (out / "mllm_demo.json").exists()


@pytest.mark.parametrize("content", ["[1, 2]", "{not json"])
def test_a_registry_that_is_not_a_json_object_is_left_alone(region_run: Path, tmp_path: Path, content: str) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "dataset_info.json").write_text(content)
    assert cli_main(["export", str(region_run), "--format", "sharegpt", "--out", str(out)]) == 2
    assert (out / "dataset_info.json").read_text() == content and not (out / "sharegpt.json").exists()


def test_out_that_is_a_file_is_one_line_and_exit_2(region_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert cli_main(["export", str(region_run), "--format", "llava", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1 and "Traceback" not in err
    assert out.read_text() == "mine"


def test_a_foreign_summary_file_is_protected(region_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "export_summary.json").write_text("my notes")
    assert cli_main(["export", str(region_run), "--format", "llava", "--out", str(out)]) == 2
    assert (out / "export_summary.json").read_text() == "my notes" and not (out / "llava.json").exists()


# ---------------------------------------------------------------- item 15: image paths as the run saw them


def test_export_from_another_folder_finds_the_runs_relative_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    workspace = tmp_path / "ws"
    table = write_region_caption_table(workspace / "data", n_rows=2, size=(160, 120), n_boxes=2)
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    for row in rows:  # the seed's form: ./data/... relative to where the run starts
        row["image"] = "./data/" + Path(row["image"]).name
    write_jsonl(table, rows)
    monkeypatch.chdir(workspace)
    run_region_pipeline(Path("data/table.jsonl"), Path("cache"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    stats = export_run(workspace / "cache", "sharegpt", elsewhere / "out")
    assert stats.rows_in == 2 and stats.samples == 2 and not stats.rows_skipped
    images = json.loads((elsewhere / "out" / "sharegpt.json").read_text())[0]["images"]
    assert (elsewhere / "out" / images[0]).resolve() == (workspace / "data" / "scene_00000.jpg").resolve()

    for image in (workspace / "data").glob("scene_*.jpg"):  # the images are gone: not an empty success
        image.unlink()
    assert cli_main(["export", str(workspace / "cache"), "--format", "llava", "--out", str(elsewhere / "o2")]) == 2
    err = capsys.readouterr().err
    assert "0 of 2 rows exported" in err and "./data/scene_0000" in err and err.count("\n") == 1
    assert not (elsewhere / "o2" / "llava.json").exists()


# ---------------------------------------------------------------- item 17: placeholders, and the LLaVA image type


def sample_texts_and_images(fmt: str, record: dict[str, Any]) -> tuple[int, int]:
    """(placeholders in the sample, images of the sample) as each trainer counts them."""
    if fmt == "llava":
        return sum(placeholder_count(t["value"]) for t in record["conversations"]), len(record["image"])
    if fmt == "sharegpt":
        return sum(placeholder_count(t["value"]) for t in record["conversations"]), len(record["images"])
    parts = [p for m in record["messages"] for p in m["content"]]
    texts = sum(placeholder_count(p["text"]) for p in parts if p["type"] == "text")
    return texts + sum(1 for p in parts if p["type"] == "image"), len(record["images"])


@pytest.mark.parametrize("fmt", ["llava", "sharegpt", "jsonl-messages"])
def test_placeholders_equal_images_in_every_sample_of_every_format(
    fmt: str, region_run: Path, imgdiff_step: Path, tmp_path: Path
) -> None:
    name = {"llava": "llava.json", "sharegpt": "sharegpt.json", "jsonl-messages": "messages.jsonl"}[fmt]
    checked = 0
    for source in (region_run, imgdiff_step):
        out = tmp_path / f"out_{source.stem}"
        stats = export_run(source, fmt, out)
        data = datasets.load_dataset("json", data_files=str(out / name), split="train")
        assert len(data) == stats.samples > 0
        for record in data:
            placeholders, images = sample_texts_and_images(fmt, record)
            assert placeholders == images
            checked += 1
        text = (out / name).read_text()
        assert "a thing 1" in text or "turned" in text  # the caption itself is kept
        for token in PLACEHOLDERS[1:]:
            assert token not in text
    assert checked == 3 + 1


def test_llava_exports_of_both_pipelines_load_together(region_run: Path, imgdiff_step: Path, tmp_path: Path) -> None:
    export_run(region_run, "llava", tmp_path / "regions")
    export_run(imgdiff_step, "llava", tmp_path / "pairs")
    data = datasets.load_dataset(
        "json", data_files=[str(tmp_path / "regions" / "llava.json"), str(tmp_path / "pairs" / "llava.json")]
    )["train"]
    assert len(data) == 4
    assert sorted(len(r["image"]) for r in data) == [1, 1, 1, 2]


def test_parquet_shards_merge_the_registry_and_keep_earlier_shards(region_run: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data_dir"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text(json.dumps(LLAMA_FACTORY_INFO, indent=2))
    assert cli_main(["export", str(region_run), "--format", "parquet", "--out", str(data_dir)]) == 0
    info = read_info(data_dir / "dataset_info.json")
    assert list(info) == [*LLAMA_FACTORY_INFO, "dataflow_mm"] and info["dataflow_mm"]["file_name"] == "data"
    shards = {p: p.read_bytes() for p in (data_dir / "data").glob("train-*.parquet")}
    assert shards
    assert cli_main(["export", str(region_run), "--format", "parquet", "--out", str(data_dir)]) == 2
    assert {p: p.read_bytes() for p in (data_dir / "data").glob("train-*.parquet")} == shards
