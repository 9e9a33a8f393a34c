"""A real vLLM engine aborts one request of a ``LocalModelVLMServing_vllm`` chat; the answers are written as JSON.

Runs INSIDE the vLLM test environment (``.venv-vllm/bin/python``); ``tests/serving/test_vllm_abort.py``
starts it as a subprocess::

    .venv-vllm/bin/python tests/serving/vllm_abort_script.py MODEL_DIR OUT.json

The request whose prompt holds ``ABORT`` (the second sent) is aborted inside the engine right after it
is added (``LLMEngine.add_request``, which the window sends through): what a shutdown or a cancelled
client does. The offline engine then finishes without an output for it. The same request is sent
again afterwards, as a rerun would. OUT: ``{"first": [<completion>, ...],
"again": [<completion>]}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any


def main(model_dir: str, out_path: str) -> None:
    from dataflow_mm.serving.messages import build_conversation
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    serving = LocalModelVLMServing_vllm(
        model_dir,
        vllm_dtype="float32",
        vllm_max_model_len=2048,
        vllm_enforce_eager=True,
        vllm_temperature=0.0,
        vllm_max_tokens=12,
    )
    serving.start()
    engine = serving._llm.llm_engine
    add_request = engine.add_request
    added: list[str] = []

    def add_then_abort(request_id: str, prompt: Any, params: Any, **kwargs: Any) -> Any:
        added.append(add_request(request_id, prompt, params, **kwargs))
        if len(added) == 2:  # "ABORT this row": requests are added in the order of the call
            engine.abort_request([added[-1]], internal=True)
        return added[-1]

    conversations = [build_conversation(text) for text in ("first row", "ABORT this row", "third row")]
    engine.add_request = add_then_abort
    first = serving.chat(conversations)
    engine.add_request = add_request
    assert len(added) == 3, added
    again = serving.chat([conversations[1]])
    serving.cleanup()
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(
            {"first": [dataclasses.asdict(c) for c in first], "again": [dataclasses.asdict(c) for c in again]}, out
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
