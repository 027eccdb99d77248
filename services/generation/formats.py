"""Prompt formats of the model families, from one normalised dialog.

A :class:`Dialog` is what every chat format needs: a system prompt and turns that
alternate user/assistant, start with the user and end with the user. :func:`make_dialog`
builds one from the caller's history (system messages in the history join the system
prompt, consecutive turns of one role are merged, empty turns and a leading assistant turn
are dropped) and the final user turn.

The renderers follow the published templates:

* Llama 2 chat (Meta's ``llama/generation.py`` ``chat_completion``)::

      <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] {user2} [/INST]

* Llama 3 (Meta's ``llama3/tokenizer.py`` ``ChatFormat``)::

      <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>
      <|start_header_id|>user<|end_header_id|>\\n\\n{user}<|eot_id|>...
      <|start_header_id|>assistant<|end_header_id|>\\n\\n

* Bedrock Converse: ``system=[{"text": ...}]`` and ``messages=[{"role", "content": [{"text"}]}]``.
* The JumpStart Llama 2 "dialog" payload: ``[{"role": ..., "content": ...}]``.

Control sequences of a format found *inside* the text (a passage or a question containing
``[/INST]`` or ``<|eot_id|>``) are defused with a zero-width space, so a document cannot
close the user turn and speak as the system: passages stay data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.generation.backends import Role

ModelFamily = Literal["llama2", "llama3", "plain"]
MODEL_FAMILIES: tuple[ModelFamily, ...] = ("llama2", "llama3", "plain")

ChatRole = Literal["user", "assistant"]

_ZWSP = "\u200b"
_LLAMA2_CONTROL_RE = re.compile(r"\[/?INST\]|<</?SYS>>|</?s>")
_LLAMA3_CONTROL_RE = re.compile(r"<\|[a-z_0-9]+\|>")

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
BOS, EOS = "<s>", "</s>"


@dataclass(frozen=True)
class Dialog:
    """A system prompt and alternating turns, user first and user last."""

    system: str
    turns: tuple[tuple[ChatRole, str], ...]

    @property
    def texts(self) -> list[str]:
        return [self.system, *(content for _, content in self.turns)]


def make_dialog(system: str, history: Sequence[tuple[Role, str]], user_turn: str) -> Dialog:
    """The normalised dialog of ``history`` (oldest first) followed by ``user_turn``."""
    systems = [system.strip()] if system.strip() else []
    turns: list[tuple[ChatRole, str]] = []
    for role, content in [*history, ("user", user_turn)]:
        text = content.strip()
        if not text:
            continue
        if role == "system":
            systems.append(text)
            continue
        chat_role: ChatRole = "user" if role == "user" else "assistant"
        if not turns and chat_role == "assistant":
            continue  # a conversation starts with the user
        if turns and turns[-1][0] == chat_role:
            turns[-1] = (chat_role, turns[-1][1] + "\n\n" + text)
        else:
            turns.append((chat_role, text))
    if not turns or turns[-1][0] != "user":
        raise ValueError("a dialog must end with a non-empty user turn")
    return Dialog(system="\n\n".join(systems), turns=tuple(turns))


def _defuse(pattern: re.Pattern[str], text: str) -> str:
    return pattern.sub(lambda match: match.group()[0] + _ZWSP + match.group()[1:], text)


def llama2_prompt(dialog: Dialog) -> str:
    """The Llama 2 chat prompt (BOS/EOS written as ``<s>``/``</s>``, as TGI and LMI expect)."""

    def clean(text: str) -> str:
        return _defuse(_LLAMA2_CONTROL_RE, text)

    turns = [clean(content) for _, content in dialog.turns]
    if dialog.system:
        turns[0] = B_SYS + clean(dialog.system) + E_SYS + turns[0]
    parts = [
        f"{BOS}{B_INST} {prompt.strip()} {E_INST} {answer.strip()} {EOS}"
        for prompt, answer in zip(turns[0::2], turns[1::2], strict=False)
    ]
    parts.append(f"{BOS}{B_INST} {turns[-1].strip()} {E_INST}")
    return "".join(parts)


def llama3_prompt(dialog: Dialog) -> str:
    """The Llama 3 (3.1, 3.2, 3.3) chat prompt, ending with the open assistant header."""

    def message(role: str, content: str) -> str:
        text = _defuse(_LLAMA3_CONTROL_RE, content).strip()
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>"

    parts = ["<|begin_of_text|>"]
    if dialog.system:
        parts.append(message("system", dialog.system))
    parts.extend(message(role, content) for role, content in dialog.turns)
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def plain_prompt(dialog: Dialog) -> str:
    """A role-labelled transcript for a base (non-chat) model."""
    parts = [dialog.system] if dialog.system else []
    parts.extend(f"{'User' if role == 'user' else 'Assistant'}: {content}" for role, content in dialog.turns)
    parts.append("Assistant:")
    return "\n\n".join(parts)


def render_prompt(family: ModelFamily, dialog: Dialog) -> str:
    if family == "llama2":
        return llama2_prompt(dialog)
    if family == "llama3":
        return llama3_prompt(dialog)
    return plain_prompt(dialog)


def jumpstart_dialog(dialog: Dialog) -> list[dict[str, str]]:
    """The JumpStart Llama 2 chat payload's dialog: optional system message, then the turns."""
    messages = [{"role": "system", "content": dialog.system}] if dialog.system else []
    messages.extend({"role": role, "content": content} for role, content in dialog.turns)
    return messages


def converse_request(dialog: Dialog) -> dict[str, Any]:
    """``system`` and ``messages`` of a Bedrock Converse / ConverseStream request."""
    request: dict[str, Any] = {
        "messages": [{"role": role, "content": [{"text": content}]} for role, content in dialog.turns]
    }
    if dialog.system:
        request["system"] = [{"text": dialog.system}]
    return request


def openai_messages(dialog: Dialog) -> list[dict[str, str]]:
    """``messages`` of an OpenAI chat completion (the server applies its model's template)."""
    return jumpstart_dialog(dialog)


# Tokens the template adds around each message, counted into the budget (an over-estimate for
# every family above: Llama 3 adds 5 special tokens and a header word per message).
TEMPLATE_TOKENS_PER_MESSAGE = 8


__all__ = [
    "MODEL_FAMILIES",
    "TEMPLATE_TOKENS_PER_MESSAGE",
    "Dialog",
    "ModelFamily",
    "converse_request",
    "jumpstart_dialog",
    "llama2_prompt",
    "llama3_prompt",
    "make_dialog",
    "openai_messages",
    "plain_prompt",
    "render_prompt",
]
