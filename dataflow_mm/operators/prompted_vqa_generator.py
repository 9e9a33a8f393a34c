"""PromptedVQAGenerator: ask the VLM one question per row, all rows of a chunk in one batched call."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

import pandas as pd

from dataflow_mm.errors import ERROR_COLUMN, MissingFieldError, RowError, row_error_text
from dataflow_mm.operators.base import OperatorABC
from dataflow_mm.serving.base import Conversation, VLMServing
from dataflow_mm.serving.messages import build_conversation
from dataflow_mm.serving.structured import schema_text
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.media import resolve_media_path

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
_ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == ""


def conversation_from_turns(turns: Any, images: list[Any], system_prompt: str) -> Conversation:
    """A chat from a row's turns (OpenAI ``role/content`` or ShareGPT ``from/value``), images on the first user turn."""
    if not isinstance(turns, list) or not turns:
        raise MissingFieldError(f"the conversation must be a non-empty list of turns, not {str(turns)[:100]!r}")
    messages: Conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []
    pending = list(images)
    for turn in turns:
        if not isinstance(turn, dict):
            raise MissingFieldError(f"a conversation turn must be an object, not {str(turn)[:100]!r}")
        role = _ROLE_NAMES.get(str(turn.get("role", turn.get("from", ""))).lower())
        text = turn.get("content", turn.get("value"))
        if role is None or not isinstance(text, str):
            raise MissingFieldError(f"cannot read the conversation turn {str(turn)[:100]!r}")
        if role == "system":
            messages = [m for m in messages if m["role"] != "system"]
            messages.insert(0, {"role": "system", "content": text})
            continue
        content: list[dict[str, Any]] = []
        if role == "user" and pending:
            content = [{"type": "image", "image": image} for image in pending]
            pending = []
            text = text.replace("<image>", "").strip()
        content.append({"type": "text", "text": text})
        messages.append({"role": role, "content": content})
    return messages


class ResponseSchema(Protocol):
    """Gives each row the JSON schema its answer must match (e.g. ``RegionAnswerSchema``)."""

    def for_row(self, row: dict[str, Any]) -> dict[str, Any] | None: ...

    def input_columns(self) -> list[str]: ...

    def params(self) -> dict[str, Any]: ...


class PromptedVQAGenerator(OperatorABC):
    """Answer each row's prompt (or conversation) about its image with the given serving.

    With ``response_schema``, each row's answer is constrained to the JSON schema it gives that
    row (structured output); rows sharing a schema go to the serving in one batched call.
    """

    def __init__(
        self,
        serving: VLMServing,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        response_schema: ResponseSchema | None = None,
    ) -> None:
        self.serving = serving
        self.system_prompt = system_prompt
        self.response_schema = response_schema
        self._media_root = None

    def run(
        self,
        storage: FileStorage,
        input_prompt_key: str = "prompt",
        input_image_key: str | None = "image",
        input_conversation_key: str | None = None,
        output_answer_key: str = "answer",
    ) -> None:
        self.execute(
            storage,
            input_prompt_key=input_prompt_key,
            input_image_key=input_image_key,
            input_conversation_key=input_conversation_key,
            output_answer_key=output_answer_key,
        )

    def input_columns(
        self,
        input_prompt_key: str = "prompt",
        input_image_key: str | None = "image",
        input_conversation_key: str | None = None,
        **_: Any,
    ) -> list[str]:
        text_key = input_conversation_key or input_prompt_key
        schema_keys = self.response_schema.input_columns() if self.response_schema else []
        return [k for k in (text_key, input_image_key, *schema_keys) if k]

    def output_columns(self, output_answer_key: str = "answer", **_: Any) -> list[str]:
        return [output_answer_key]

    def params(self) -> dict[str, Any]:
        if self.response_schema is None:
            return {"system_prompt": self.system_prompt}
        return {"system_prompt": self.system_prompt, "response_schema": self.response_schema.params()}

    def provenance(self) -> dict[str, Any]:
        return self.serving.describe()

    def prepare(self, storage: FileStorage) -> None:
        self._media_root = storage.media_root

    def process(
        self,
        frame: pd.DataFrame,
        input_prompt_key: str = "prompt",
        input_image_key: str | None = "image",
        input_conversation_key: str | None = None,
        output_answer_key: str = "answer",
    ) -> pd.DataFrame:
        out = frame.copy()
        errors = out[ERROR_COLUMN].tolist()
        answers: list[str | None] = [None] * len(out)
        groups: dict[str, tuple[dict[str, Any] | None, list[int], list[Conversation]]] = {}
        for position, row in enumerate(out.to_dict(orient="records")):
            try:
                conversation = self._conversation(row, input_prompt_key, input_image_key, input_conversation_key)
            except RowError as exc:
                errors[position] = row_error_text(exc)
                continue
            schema = self.response_schema.for_row(row) if self.response_schema else None
            group = groups.setdefault(schema_text(schema) if schema else "", (schema, [], []))
            group[1].append(position)
            group[2].append(conversation)
        for schema, positions, conversations in groups.values():
            sampling = replace(self.serving.sampling, response_schema=schema) if schema else None
            for position, completion in zip(positions, self.serving.chat(conversations, sampling), strict=True):
                if completion.ok:
                    answers[position] = completion.text
                else:
                    errors[position] = completion.error
        out[output_answer_key] = answers
        out[ERROR_COLUMN] = errors
        return out

    def _conversation(
        self, row: dict[str, Any], prompt_key: str, image_key: str | None, conversation_key: str | None
    ) -> Conversation:
        images = []
        if image_key:
            images = [resolve_media_path(row.get(image_key), self._media_root)]
        if conversation_key:
            return conversation_from_turns(row.get(conversation_key), images, self.system_prompt)
        prompt = row.get(prompt_key)
        if _is_missing(prompt) or not isinstance(prompt, str):
            raise MissingFieldError(f"the prompt field '{prompt_key}' is empty or not text: {prompt!r}")
        return build_conversation(prompt, images, self.system_prompt)
