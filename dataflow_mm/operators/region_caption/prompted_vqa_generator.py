"""PromptedVQAGenerator: ask the VLM one question per row, all rows of a chunk in one batched call.

Each answered row also gets ``truncated``: True when the answer stopped at ``max_tokens``
(``finish_reason == "length"``), so a cut-off answer is never mistaken for a complete one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

import pandas as pd

from dataflow_mm.common.errors import (
    ERROR_COLUMN,
    MissingFieldError,
    RowError,
    UserError,
    row_error_text,
)
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import TRUNCATED_COLUMN, OperatorABC
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.core.report_view import ReportView
from dataflow_mm.serving.base import Conversation, VLMServing
from dataflow_mm.serving.messages import build_conversation
from dataflow_mm.serving.structured import schema_text
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.media import resolve_media_path

log = get_logger("operators")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_IMAGE_KEY = "image"
_NO_VIDEO_AUDIO = "dataflow-mm answers about images and text only; video and audio are not supported"
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
    """Answer each row's prompt (or conversation) about its image(s) with the given serving.

    Images: the image cell may hold any form :mod:`dataflow_mm.storage.media` reads; every image of
    a list cell goes into the request, in order (DataFlow-MM's ``"image": ["./a.jpg", ...]`` rows).
    Under the default key ``image``, a table (or row) without an image is asked text-only; a key the
    caller named must hold an image. ``prompt_template`` (DataFlow-MM's): a string, or an object with
    ``build_prompt()``, that replaces the text of each conversation's first user turn.
    With ``response_schema``, each row's answer is constrained to the JSON schema it gives that
    row (structured output); rows sharing a schema go to the serving in one batched call.
    """

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.prompted_vqa_generator.PromptedVQAGenerator"

    # The report shows the answer beside the row's image on the region-caption page.
    report_view = ReportView(
        "region_caption", roles={"answer": "answer", "prompt": "prompt"}, identifies=(("answer",),)
    )
    key_spec = KeySpec(  # DataFlow-MM's run(storage, ...) keys, in its positional order
        defaults={
            "input_prompt_key": "prompt",
            "input_image_key": DEFAULT_IMAGE_KEY,
            "input_conversation_key": None,
            "output_answer_key": "answer",
            "input_video_key": None,
            "input_audio_key": None,
        },
        writes=("output_answer_key",),
        unsupported={"input_video_key": _NO_VIDEO_AUDIO, "input_audio_key": _NO_VIDEO_AUDIO},
    )
    param_spec = ParamSpec(omit_none=("prompt_template", "response_schema"))

    def __init__(
        self,
        serving: VLMServing,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        prompt_template: Any = None,
        response_schema: ResponseSchema | None = None,
    ) -> None:
        self.serving = serving
        self.system_prompt = system_prompt
        self.prompt_template = _template_text(prompt_template)  # DataFlow-MM's object: its text
        self.response_schema = response_schema
        self._media_root = None

    def input_columns(self, **keys: Any) -> list[str]:
        keys = self.key_values(keys)
        text_key = keys["input_conversation_key"] or keys["input_prompt_key"]
        image_key = keys["input_image_key"]
        image_key = image_key if image_key != DEFAULT_IMAGE_KEY else None  # the default key is optional
        schema_keys = self.response_schema.input_columns() if self.response_schema else []
        return [k for k in (text_key, image_key, *schema_keys) if k]

    def output_columns(self, **keys: Any) -> list[str]:
        return [*super().output_columns(**keys), TRUNCATED_COLUMN]

    def provenance(self) -> dict[str, Any]:
        return self.serving.describe()

    def prepare(self, storage: FileStorage) -> None:
        self._media_root = storage.media_root

    def chunks_in_flight(self) -> int:
        """``process`` keeps no per-chunk state: chunks may overlap as far as the serving wants."""
        return self.serving.concurrent_chunks

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        prompt_key, image_key, conversation_key = (
            keys["input_prompt_key"],
            keys["input_image_key"],
            keys["input_conversation_key"],
        )
        out = frame.copy()
        errors = out[ERROR_COLUMN].tolist()
        answers: list[str | None] = [None] * len(out)
        truncated: list[bool | None] = [None] * len(out)
        groups: dict[str, tuple[dict[str, Any] | None, list[int], list[Conversation]]] = {}
        text_only = 0
        for position, row in enumerate(out.to_dict(orient="records")):
            try:
                images = self._images(row, image_key)
                conversation = self._conversation(row, prompt_key, images, conversation_key)
            except RowError as exc:
                errors[position] = row_error_text(exc)
                continue
            text_only += 0 if images else 1
            schema = self.response_schema.for_row(row) if self.response_schema else None
            group = groups.setdefault(schema_text(schema) if schema else "", (schema, [], []))
            group[1].append(position)
            group[2].append(conversation)
        if text_only and image_key:
            log.warning(
                f"{text_only} row(s) have no '{image_key}': asked text-only "
                "(pass input_image_key=None for a text-only table)"
            )
        for schema, positions, conversations in groups.values():
            sampling = replace(self.serving.sampling, response_schema=schema) if schema else None
            for position, completion in zip(positions, self.serving.chat(conversations, sampling), strict=True):
                if completion.ok:
                    answers[position] = completion.text
                    truncated[position] = completion.truncated
                else:
                    errors[position] = completion.error
        out[keys["output_answer_key"]] = answers
        out[TRUNCATED_COLUMN] = truncated
        out[ERROR_COLUMN] = errors
        return out

    def _images(self, row: dict[str, Any], image_key: str | None) -> list[Any]:
        """The row's images (one path or a list of them); none for a text-only row under the default key."""
        if not image_key:
            return []
        value = row.get(image_key)
        values = value.tolist() if hasattr(value, "tolist") and not isinstance(value, str) else value
        values = list(values) if isinstance(values, (list, tuple)) else [] if _is_missing(values) else [values]
        if not values:
            if image_key == DEFAULT_IMAGE_KEY:
                return []
            raise MissingFieldError(f"the image field '{image_key}' is empty")
        return [
            resolve_media_path(item, self._media_root, self._media_cache, self._download_timeout) for item in values
        ]

    def _conversation(
        self, row: dict[str, Any], prompt_key: str, images: list[Any], conversation_key: str | None
    ) -> Conversation:
        if conversation_key:
            turns = row.get(conversation_key)
            if self.prompt_template is not None:
                turns = _with_first_user_text(turns, self.prompt_template)
            return conversation_from_turns(turns, images, self.system_prompt)
        prompt = row.get(prompt_key)
        if _is_missing(prompt) or not isinstance(prompt, str):
            raise MissingFieldError(f"the prompt field '{prompt_key}' is empty or not text: {prompt!r}")
        return build_conversation(prompt, images, self.system_prompt)


def _template_text(template: Any) -> str | None:
    """The text of a prompt template: a string, or what DataFlow-MM's ``build_prompt()`` returns."""
    if template is None or isinstance(template, str):
        return template
    build = getattr(template, "build_prompt", None)
    if not callable(build):
        raise UserError(f"prompt_template must be a string or have build_prompt(), not {type(template).__name__}")
    text = build()
    if not isinstance(text, str):
        raise UserError(f"prompt_template.build_prompt() must return a string, not {type(text).__name__}")
    return text


def _with_first_user_text(turns: Any, text: str) -> Any:
    """``turns`` with the first user turn's text replaced (as DataFlow-MM's prompt_template does)."""
    if not isinstance(turns, list):
        return turns
    replaced = [dict(t) if isinstance(t, dict) else t for t in turns]
    for turn in replaced:
        if isinstance(turn, dict) and _ROLE_NAMES.get(str(turn.get("role", turn.get("from", ""))).lower()) == "user":
            turn["content" if "content" in turn else "value"] = text
            break
    return replaced
