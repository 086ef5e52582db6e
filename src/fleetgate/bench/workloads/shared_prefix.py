"""The shared-prefix workload: groups of prompts that share a system prompt."""

from __future__ import annotations

from fleetgate.bench.records import RequestSpec
from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads.base import Message, Prompt, _Base, _stream, chat_tokens
from fleetgate.bench.workloads.settings import WorkloadSettings

# ---- shared-prefix ----------------------------------------------------------------------------------------


class SharedPrefixWorkload(_Base):
    """`groups` x `prompts_per_group` prompts: a group's system prompt plus one of its distinct questions.

    The shape of llm-d's and inference-perf's shared-prefix benchmark. System prompts and questions depend on
    the run `seed` and their indices only, so every worker sends the same prompts (and prefix caches see them
    as one set). Each worker cycles through all prompts in its own random order: each pass of groups x
    prompts_per_group requests sends every prompt once. Chat: a system message and a user message;
    completions: system text, a blank line, the question (with token_ids: a shared id prefix per group, then
    the question's ids); responses: the two messages as `input`.
    """

    name = "shared-prefix"

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        super().__init__(settings, sizer, seed, worker)
        self._systems: dict[int, Prompt] = {}
        self._questions: dict[tuple[int, int], Prompt] = {}
        self._order: list[tuple[int, int]] = []

    def system(self, group: int) -> Prompt:
        found = self._systems.get(group)
        if found is None:
            rng = _stream(self.seed, "group", group)
            tokens = self.settings.system_len
            if self.settings.token_ids:
                found = self.sizer.ids(tokens, rng)
            else:
                found = self.make_text(tokens, rng, self.language(rng))
            self._systems[group] = found
        return found

    def question(self, group: int, index: int) -> Prompt:
        found = self._questions.get((group, index))
        if found is None:
            rng = _stream(self.seed, "group", group, "question", index)
            tokens = self.settings.question_len
            if self.settings.token_ids:
                found = self.sizer.ids(tokens, rng)
            else:
                lang = self.language(_stream(self.seed, "group", group))  # the group's language
                found = self.make_text(tokens, rng, lang)
            self._questions[(group, index)] = found
        return found

    def next_request(self) -> RequestSpec:
        s = self.settings
        if not self._order:
            self._order = [(g, p) for g in range(s.groups) for p in range(s.prompts_per_group)]
            self.rng.shuffle(self._order)
            self._order.reverse()  # popped from the end
        group, index = self._order.pop()
        system, question = self.system(group), self.question(group, index)
        max_tokens = self.output_len(self.rng)
        content = s.system_len + s.question_len
        if s.api == "completions":
            if isinstance(system, list) and isinstance(question, list):
                return self.spec(self.prompt_body(system + question, max_tokens), content, max_tokens)
            prompt = f"{system}\n\n{question}" if system else str(question)
            return self.spec(self.prompt_body(prompt, max_tokens), content + (1 if system else 0), max_tokens)
        messages: list[Message] = [{"role": "user", "content": question}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        planned = chat_tokens(content, len(messages))
        return self.spec(self.messages_body(messages, max_tokens), planned, max_tokens)
