"""/v1/chat/completions on the simulated engine: tools, structured output, stop strings, logprobs, n."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fleetgate.protocol import BadRequestError, OpenAIError, Usage, random_id
from fleetgate.sim.choices import Choice, Crash, merge, sampling_seed
from fleetgate.sim.core import SimCore
from fleetgate.sim.engine import EngineRequest
from fleetgate.sim.scripts import Script, ToolStream, json_script, pick_tool, tool_script
from fleetgate.tokenizer import IM_END, render_chat
from fleetgate.worker import render
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import (
    ChatCompletionRequest,
    NamedToolChoice,
    check_sampling,
    resolve_chat_max_tokens,
    validate,
)


@dataclass
class ChatRun:
    """A chat request the engine has taken: what its answer (whole or streamed) is made of."""

    req: ChatCompletionRequest
    prompt_len: int
    reqs: list[EngineRequest]
    choices: list[Choice]
    rid: str
    created: int
    model: str


class ChatRoutes(SimCore):
    async def chat(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(ChatCompletionRequest, await self._body(request))
            run = await self._start_chat(request, req, received)
        except OpenAIError as e:
            return reply_error(e)
        if run is None:
            return Response(status_code=499)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._streaming(self._chat_stream(run, include_usage), run.reqs)

        async def make() -> Response:
            return reply_json(await self._chat_whole(run))

        return await self._run(request, run.reqs, make)

    async def _start_chat(
        self, request: Request, req: ChatCompletionRequest, received: float
    ) -> ChatRun | None:
        """Check the request and hand it to the engine (None: the client left while a fault held it).
        Other API surfaces (messages.py) answer from the same run."""
        lora = self._check_model(req.model)
        check_sampling(req)
        self._check_tools(req)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        tools = [t.model_dump(exclude_none=True) for t in req.tools or ()]
        prompt = render_chat(self.tokenizer, messages, tools or None)
        choice = req.tool_choice
        named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        mode = choice if isinstance(choice, str) else None
        last_role = messages[-1]["role"] if messages else None
        max_tokens = resolve_chat_max_tokens(req, len(prompt), self.s.engine.max_model_len)
        reqs: list[EngineRequest] = []
        choices: list[Choice] = []
        stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        for i in range(req.n):
            seed = sampling_seed(req.seed, i, req.temperature, prompt, lora)
            rng = random.Random(seed if seed is not None else self.rng.getrandbits(64))
            script: Script | None = None
            tool = pick_tool(tools, mode, named, last_role)
            if tool is not None:
                script = tool_script(self.tokenizer, tool, rng)
            elif req.response_format:
                script = json_script(self.tokenizer, req.response_format, rng)
            er = self._new_request(prompt, max_tokens, seed, req.ignore_eos, lora, req.n, script)
            reqs.append(er)
            stream = ToolStream(script) if script and script.tool_name else None
            pieces = script.pieces if script else ()
            choices.append(Choice(i, er, stops, self.tokenizer.token_text, stream, pieces))
        if not await self._admit(request, reqs, received):
            return None
        model = req.model or self.model_name
        return ChatRun(req, len(prompt), reqs, choices, random_id("chatcmpl-"), int(time.time()), model)

    async def _chat_whole(self, run: ChatRun) -> dict[str, Any]:
        """The whole answer's body, once every choice has finished."""
        await self._wait_all(run.reqs)
        out = []
        completion = 0
        for c in run.choices:
            out.append(self._chat_choice(c, run.req.logprobs, run.req.top_logprobs or 0))
            completion += len(c.req.output)
        return render.chat_body(run.rid, run.created, run.model, out, Usage(run.prompt_len, completion))

    def _check_tools(self, req: ChatCompletionRequest) -> None:
        choice = req.tool_choice
        if choice == "auto" and not (self.s.auto_tool_choice and self.s.tool_call_parser):
            raise BadRequestError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            )
        if isinstance(choice, NamedToolChoice):
            name = choice.function.name
            if not self.s.tool_call_parser:
                raise BadRequestError(f'tool_choice=function "{name}" requires --tool-call-parser to be set')
            if not any(t.function.name == name for t in req.tools or ()):
                raise BadRequestError(f"Tool '{name}' has not been passed in `tools`.", param="tool_choice")
        if choice is not None and not req.tools and choice != "none":
            raise BadRequestError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        if choice is None and req.tools and not (self.s.auto_tool_choice and self.s.tool_call_parser):
            # vLLM treats tools without tool_choice as "auto" only when auto tool choice is enabled.
            req.tool_choice = "none"

    def _chat_choice(self, c: Choice, logprobs: bool | None, top: int) -> dict[str, Any]:
        tokens = c.req.output
        script_tool = c.tool.script if c.tool else None
        if script_tool is not None and c.req.finish_reason == "stop":
            call = {
                "id": script_tool.call_id,
                "type": "function",
                "function": {"name": script_tool.tool_name, "arguments": script_tool.arguments},
            }
            self.stats.on_tool_parse(streaming=False, called=True)
            message = render.chat_message(None, [call])
            return render.chat_choice(c.index, message, None, "tool_calls", None)
        if self.s.tool_call_parser:
            self.stats.on_tool_parse(streaming=False, called=False)
        text = c.final_text("".join(c.text(k, t) for k, t in enumerate(tokens)))
        reason, stop_reason = self._finish_of(c)
        lp = None
        if logprobs:
            lp = {
                "content": [
                    render.token_logprob(c.text(k, t), c.req.rng, top)
                    for k, t in enumerate(tokens)
                    if t != IM_END
                ]
            }
        return render.chat_choice(c.index, render.chat_message(text, None), lp, reason, stop_reason)

    async def _chat_stream(self, run: ChatRun, include_usage: bool) -> AsyncIterator[bytes]:
        req, choices = run.req, run.choices
        top = (req.top_logprobs or 0) if req.logprobs else -1
        enc = render.ChatChunks(run.rid, run.created, run.model)
        crash = self._crash_point()
        named = isinstance(req.tool_choice, NamedToolChoice)
        sent = 0
        for c in choices:
            yield enc.role(c.index)
        async for c, tokens, finish in merge(choices):
            out: list[bytes] = []
            last = len(tokens) - 1
            for k, tok in enumerate(tokens):
                text = c.text(c.shown, tok)
                c.shown += 1
                lp = {"content": [render.token_logprob(text, c.req.rng, top)]} if top >= 0 else None
                ending = finish if k == last else None
                if c.tool is not None:
                    called = c.tool.called  # before this token: the last token's delta is not sent
                    delta = c.tool.delta()
                    if self.s.tool_call_parser:
                        self.stats.on_tool_parse(streaming=True, called=delta is not None)
                    if ending is not None:
                        # vLLM ends a stream that has streamed a call as `tool_calls` even when max_tokens
                        # cut it, unless the tool was named (recorded from vLLM 0.26: contract_tools.json's
                        # tools_required_stream and tools_named_stream, messages_contract.json's
                        # messages_tools_any_stream).
                        cut_call = called and not named
                        reason = "tool_calls" if ending == "stop" or cut_call else ending
                        out.append(enc.finish(c.index, {}, reason, None, not include_usage))
                    elif delta is not None:
                        out.append(enc.delta(c.index, delta, lp))
                    continue
                if ending is not None and c.stop_hit is not None:
                    delta = {"content": c.hit_piece}
                    out.append(enc.finish(c.index, delta, "stop", c.stop_hit, not include_usage, lp))
                elif ending is not None:
                    out.append(enc.finish(c.index, {"content": text}, ending, None, not include_usage, lp))
                else:
                    out.append(enc.content(c.index, text, lp))
            if out:
                yield b"".join(out)
            sent += len(tokens)
            if crash is not None and sent >= crash:
                raise Crash
        if include_usage:
            completion = sum(len(c.req.output) for c in choices)
            yield enc.usage(Usage(run.prompt_len, completion))
        yield render.DONE
