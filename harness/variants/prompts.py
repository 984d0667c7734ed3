"""Prompt formats: a variant is evaluated in the format it was trained on, not in whatever the tokenizer offers.

Peers' trackers are full of merged or fine-tuned models that "behave as if untrained" because they were
prompted through a chat template while they had learned `### Instruction:` prompts (or the reverse). A
variant therefore carries its format: the tokenizer's chat template (with the suite's system prompt, none,
or another one), or a plain template whose `{prompt}` is the user's message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from harness.errors import HarnessInputError, Problem
from harness.suite.suite import Case, Suite

FormatKind = Literal["chat", "template"]
PLACEHOLDER = "{prompt}"
SYSTEM_PLACEHOLDER = "{system}"
Rendered = list[dict[str, str]] | str


@dataclass(frozen=True)
class PromptFormat:
    """How a case becomes the tokens a variant sees.

    `chat`: the tokenizer's chat template with a generation prompt; `system_prompt` is "suite" (the suite's
    system prompt, the default), "none", or the literal text to send instead.
    `template`: plain text; `{prompt}` stands for the user's message and `{system}` for the suite's system
    prompt; `add_special_tokens` tokenizes it as training did (a BOS token where the tokenizer adds one).
    """

    kind: FormatKind = "chat"
    system_prompt: str = "suite"
    template: str | None = None
    add_special_tokens: bool = True

    def problems(self, where: str) -> list[Problem]:
        """What makes this format unusable, for the strict loaders of run files and presets."""
        out: list[Problem] = []
        if self.kind == "template":
            if not self.template or self.template.count(PLACEHOLDER) != 1:
                out.append(
                    Problem(
                        f"{where}.template",
                        "a template format needs a template containing {prompt} exactly once",
                        'e.g. template: "### Instruction:\\n{prompt}\\n### Response:\\n"',
                    )
                )
        elif self.template is not None:
            out.append(
                Problem(f"{where}.template", "is only read with kind: template", "remove it, or set kind: template")
            )
        return out

    @property
    def is_default(self) -> bool:
        """The format every cache key of earlier versions assumed: chat template plus the suite's system prompt."""
        return self.kind == "chat" and self.system_prompt == "suite"

    def render(self, suite: Suite, case: Case) -> Rendered:
        """The chat (for a chat template) or the exact prompt text for one case."""
        chat = suite.chat(case)
        if self.kind == "chat":
            if self.system_prompt == "suite":
                return chat
            turns = [m for m in chat if m["role"] != "system"]
            if self.system_prompt == "none":
                return turns
            return [{"role": "system", "content": self.system_prompt}, *turns]
        users = [m for m in chat if m["role"] == "user"]
        if len(users) != 1 or any(m["role"] == "assistant" for m in chat):
            raise HarnessInputError(
                Problem(
                    f"case {case.id}",
                    f"has {len(chat)} turns; a template prompt format renders one user message",
                    "evaluate multi-turn cases with a chat format, or leave them out of this suite",
                )
            )
        # split first: a system prompt that happens to contain "{prompt}" must not move the user's message
        head, tail = (self.template or PLACEHOLDER).split(PLACEHOLDER, 1)
        system = suite.system_prompt or ""
        return head.replace(SYSTEM_PLACEHOLDER, system) + users[0]["content"] + tail.replace(SYSTEM_PLACEHOLDER, system)

    def encode(self, tokenizer: Any, rendered: Rendered) -> list[int]:
        """Token ids of one rendered prompt, tokenized the way the variant was trained."""
        if isinstance(rendered, str):
            ids = tokenizer(rendered, add_special_tokens=self.add_special_tokens)["input_ids"]
            return [int(t) for t in ids]
        from harness.engine.generate import encode_chats  # torch and transformers load only when something is encoded

        return encode_chats(tokenizer, [rendered])[0]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.kind == "chat":
            out.pop("template")
            out.pop("add_special_tokens")
        else:
            out.pop("system_prompt")
        return out

    def describe(self) -> str:
        if self.kind == "chat":
            system = {"suite": "the suite's system prompt", "none": "no system prompt"}.get(
                self.system_prompt, "a custom system prompt"
            )
            return f"chat template with {system}"
        return f"plain template {self.template!r}" + ("" if self.add_special_tokens else " (no special tokens added)")


CHAT = PromptFormat()


def from_training_data(
    data_format: str, template: str | None, system_prompt: str | None, suite_system: str | None
) -> PromptFormat:
    """The evaluation format that matches how a preset's training prompts were built (see harness.data).

    messages: the chat template, with the system prompt training prepended (the suite's unless the preset
    overrides it); instruction: the preset's template with `{instruction}` as the user's message; text: the
    preset's template marks the part of each text before the answer (None: unknown, the doctor says so).
    """
    if data_format == "messages":
        system = suite_system if system_prompt is None else system_prompt
        if not system:  # harness.data prepends no system turn for an empty one: neither may the evaluation
            return PromptFormat(system_prompt="none")
        return CHAT if system == suite_system else PromptFormat(system_prompt=system)
    if template is None:  # text: unknown; instruction: harness.data's default template is "{instruction}"
        return CHAT if data_format == "text" else PromptFormat(kind="template", template=PLACEHOLDER)
    return PromptFormat(kind="template", template=template.replace("{instruction}", PLACEHOLDER, 1))


def load_format(raw: Any, where: str, problems: list[Problem]) -> PromptFormat | None:
    """A prompt format from a run file or metadata mapping; every problem is collected, None if unusable."""
    from harness.config import build

    if raw is None:
        return CHAT
    if raw == "chat":
        return CHAT
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                where,
                f"must be a mapping or 'chat', got {raw!r}",
                "e.g. {kind: chat} or {kind: template, template: ...}",
            )
        )
        return None
    before = len(problems)
    fmt = build(PromptFormat, raw, where, problems)
    if fmt is None or len(problems) > before:
        return None
    found = fmt.problems(where)
    problems.extend(found)
    return None if found else fmt
