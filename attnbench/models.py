"""Model presets: the attention heads of published models, by name, for suites' ``model`` axis and ``--model``.

Each entry transcribes fields of the model's Hugging Face ``config.json``
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` where the
config gives one, else ``hidden_size / num_attention_heads``); the URL beside
it is the config they were copied from. They were written down from the
published configs, not fetched, so a test pins each value. A preset sets
heads_q, heads_kv and head_dim, and the attention variants its model uses
(``head_dim_v``, ``softcap``, ``sinks``). A model whose layers attend in more
than one way has several *forms*, and a case with the preset becomes one case
per form: Gemma 2 and gpt-oss alternate global layers with sliding-window ones
(a form that turns a causal mask into its window), DeepSeek-V3 attends with
192/128-wide heads in prefill and 576/512 over one kv head in absorbed decode.

A ``pending`` preset is listed but cannot be a case yet: its attention needs a
field ``Case`` does not have, named in the text.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Form:
    """One way a model's layers attend: Case fields over the preset's, and a name for listings."""

    name: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    window: int | None = None
    """A sliding-window form: a causal case becomes ``mask: sliding_window`` with this window; a case
    with no mask (or another) stays as the global form has it."""


@dataclass(frozen=True)
class Model:
    """One model's attention, as its ``config.json`` says it."""

    name: str
    config: Mapping[str, int]
    """The transcribed config.json fields the heads come from."""
    source: str
    """The config.json the fields were transcribed from."""
    note: str = ""
    pending: str = ""
    """Why the preset cannot be a case yet; empty when it can."""
    variants: Mapping[str, Any] = field(default_factory=dict)
    """Case fields every form sets beyond the heads (``softcap``, ``sinks``, ``head_dim_v``)."""
    forms: tuple[Form, ...] = ()
    """The ways its layers attend, when there are several; empty: one, the heads and ``variants``."""

    @property
    def heads_q(self) -> int:
        return self.config["num_attention_heads"]

    @property
    def heads_kv(self) -> int:
        return self.config["num_key_value_heads"]

    @property
    def head_dim(self) -> int | None:
        """The config's head_dim; MLA's q/k width (qk_nope_head_dim + qk_rope_head_dim); else hidden_size /
        num_attention_heads. None while pending."""
        if self.pending:
            return None
        if "qk_nope_head_dim" in self.config:
            return self.config["qk_nope_head_dim"] + self.config["qk_rope_head_dim"]
        return self.config.get("head_dim") or self.config["hidden_size"] // self.heads_q

    def case_fields(self, values: Mapping[str, Any], keep: Iterable[str] = ()) -> list[dict[str, Any]]:
        """``values`` (Case fields, mask included) as each of the model's forms makes them, duplicates dropped;
        the fields in ``keep`` (a suite's own choices) stay as ``values`` has them, the heads excepted."""
        keep = set(keep) - {"heads_q", "heads_kv", "head_dim"}
        out: list[dict[str, Any]] = []
        for form in self.forms or (Form("all layers"),):
            fields_ = {**values, "heads_q": self.heads_q, "heads_kv": self.heads_kv, "head_dim": self.head_dim}
            fields_.update((k, v) for k, v in {**self.variants, **form.fields}.items() if k not in keep)
            if form.window is not None and fields_.get("mask") == "causal":
                fields_.update(mask="sliding_window", window=form.window)
            if fields_ not in out:
                out.append(fields_)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "heads_q": self.heads_q, "heads_kv": self.heads_kv, "head_dim": self.head_dim,
                "source": self.source, "config": dict(self.config), "note": self.note, "pending": self.pending,
                "variants": dict(self.variants),
                "forms": [{"name": f.name, **dict(f.fields), **({"window": f.window} if f.window else {})}
                          for f in self.forms]}


def _hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"


_PRESETS = (
    # Llama 3.1: GQA, 8 kv heads; head_dim 4096 / 32 and 8192 / 64.
    Model("llama-3.1-8b", {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096},
          _hf("meta-llama/Llama-3.1-8B")),
    Model("llama-3.1-70b", {"num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192},
          _hf("meta-llama/Llama-3.1-70B")),
    Model("mistral-7b", {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096},
          _hf("mistralai/Mistral-7B-v0.1"), note="v0.1 attends through a 4096-token sliding window"),
    # Qwen2.5: 3584 / 28 and 8192 / 64, both 128.
    Model("qwen2.5-7b", {"num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584},
          _hf("Qwen/Qwen2.5-7B")),
    Model("qwen2.5-72b", {"num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192},
          _hf("Qwen/Qwen2.5-72B")),
    # Gemma 2 states head_dim 256, wider than hidden_size / heads (224); attn_logit_softcapping 50.0 and
    # sliding_window 4096 on every other layer; query_pre_attn_scalar 256 is the default scale's 1/sqrt(256).
    Model("gemma-2-9b", {"num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                         "hidden_size": 3584, "attn_logit_softcapping": 50, "sliding_window": 4096},
          _hf("google/gemma-2-9b"),
          note="alternates 4096-token sliding-window and global layers; logit softcapping 50",
          variants={"softcap": 50.0}, forms=(Form("global"), Form("sliding", window=4096))),
    # gpt-oss states head_dim 64; hidden_size 2880 is not heads x head_dim; sliding_window 128 on every other
    # layer, and a learned sink logit per head.
    Model("gpt-oss-20b", {"num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                          "hidden_size": 2880, "sliding_window": 128}, _hf("openai/gpt-oss-20b"),
          note="alternates 128-token sliding-window and global layers; learned attention sinks",
          variants={"sinks": True}, forms=(Form("global"), Form("sliding", window=128))),
    Model("gpt-oss-120b", {"num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                           "hidden_size": 2880, "sliding_window": 128}, _hf("openai/gpt-oss-120b"),
          note="alternates 128-token sliding-window and global layers; learned attention sinks",
          variants={"sinks": True}, forms=(Form("global"), Form("sliding", window=128))),
    # MLA: q and k heads are qk_nope_head_dim + qk_rope_head_dim = 192 wide, v heads 128; decode with the
    # up-projections absorbed attends 576-wide keys (kv_lora_rank 512 + rope 64) and 512-wide values over 1 kv
    # head, scores still scaled by 1/sqrt(192) (YaRN's mscale correction is not modelled).
    Model("deepseek-v3", {"num_attention_heads": 128, "num_key_value_heads": 128, "qk_nope_head_dim": 128,
                          "qk_rope_head_dim": 64, "v_head_dim": 128, "kv_lora_rank": 512, "hidden_size": 7168},
          _hf("deepseek-ai/DeepSeek-V3"),
          note="MLA: q/k head_dim 192, v 128 (prefill); absorbed decode 576 / 512 over 1 kv head",
          variants={"head_dim_v": 128},
          forms=(Form("prefill"), Form("absorbed decode", {"heads_kv": 1, "head_dim": 576, "head_dim_v": 512,
                                                             "scale": 192 ** -0.5}))),
)

MODELS: dict[str, Model] = {m.name: m for m in _PRESETS}
"""Every preset by name; ``attnbench models`` lists them."""


def lookup(name: str) -> Model:
    """The preset ``name``, one a case can express; ValueError saying why not (unknown, with close names; pending)."""
    model = MODELS.get(name)
    if model is None:
        close = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known: {', '.join(MODELS)} (attnbench models lists them)")
    if model.pending:
        raise ValueError(f"model {name!r} cannot be a case yet: {model.pending}")
    return model
