"""Single-prompt workloads: random and sharegpt-like."""

from __future__ import annotations

from fleetgate.bench.records import RequestSpec
from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads.base import TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS_REPLY, _Base
from fleetgate.bench.workloads.lengths import length_dist
from fleetgate.bench.workloads.settings import WorkloadSettings

# ---- random and sharegpt-like -----------------------------------------------------------------------------


class RandomWorkload(_Base):
    """Single prompts with input and output lengths drawn from `input_len` and `output_len`; for chat and
    Responses the input length includes the chat template, so `usage.prompt_tokens` matches it."""

    name = "random"

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        super().__init__(settings, sizer, seed, worker)
        self.input_len = length_dist(settings.input_len)

    def next_request(self) -> RequestSpec:
        rng = self.rng
        tokens = self.input_len(rng)
        max_tokens = self.output_len(rng)
        # input_len is the whole prompt as the server counts it (usage.prompt_tokens), template included.
        if self.settings.api != "completions":
            tokens = max(1, tokens - TEMPLATE_TOKENS_PER_MESSAGE - TEMPLATE_TOKENS_REPLY)
        return self.single(self.prompt(tokens, rng), tokens, max_tokens)


SHAREGPT_INPUT = "lognormal:220:1.0:4096"
SHAREGPT_OUTPUT = "lognormal:200:0.9:2048"


class ShareGPTLikeWorkload(RandomWorkload):
    """Single prompts whose lengths follow a ShareGPT-like mix, generated locally (no dataset is downloaded).

    Input lengths are lognormal with median 220 tokens and sigma 1.0, capped at 4096; outputs lognormal with
    median 200 and sigma 0.9, capped at 2048 (`SHAREGPT_INPUT`, `SHAREGPT_OUTPUT`). These parameters are an
    approximation of published length statistics of ShareGPT V3 (the ShareGPT_V3_unfiltered_cleaned_split set
    that vLLM's serving benchmark samples): heavy-tailed, lognormal-like prompt and answer lengths of a few
    hundred tokens at the median. They were not fitted to the dataset here. An `input_len` or `output_len`
    other than the settings' default ("512", "128") replaces the corresponding distribution.
    """

    name = "sharegpt-like"

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        # Compared with the defaults rather than model_fields_set, which a dump and re-validation loses.
        fields = WorkloadSettings.model_fields
        overrides = {
            key: mix
            for key, mix in (("input_len", SHAREGPT_INPUT), ("output_len", SHAREGPT_OUTPUT))
            if getattr(settings, key) == fields[key].default
        }
        super().__init__(settings.model_copy(update=overrides), sizer, seed, worker)
