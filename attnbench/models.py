"""Model presets: the attention heads of published models, by name, for suites' ``model`` axis and ``--model``.

Each entry transcribes fields of the model's Hugging Face ``config.json``
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` where the
config gives one, else ``hidden_size / num_attention_heads``); the URL beside
it is the config they were copied from. They were written down from the
published configs, not fetched, so a test pins each value. A preset sets
heads_q, heads_kv and head_dim only: the model's masks (sliding windows),
softcapping or sinks are the suite's to choose.

A ``pending`` preset is listed but cannot be a case yet: its attention needs a
field ``Case`` does not have, named in the text.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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

    @property
    def heads_q(self) -> int:
        return self.config["num_attention_heads"]

    @property
    def heads_kv(self) -> int:
        return self.config["num_key_value_heads"]

    @property
    def head_dim(self) -> int | None:
        """The config's head_dim, else hidden_size / num_attention_heads; None while pending."""
        if self.pending:
            return None
        return self.config.get("head_dim") or self.config["hidden_size"] // self.heads_q

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "heads_q": self.heads_q, "heads_kv": self.heads_kv, "head_dim": self.head_dim,
                "source": self.source, "config": dict(self.config), "note": self.note, "pending": self.pending}


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
    # Gemma 2 states head_dim 256, wider than hidden_size / heads (224).
    Model("gemma-2-9b", {"num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                         "hidden_size": 3584}, _hf("google/gemma-2-9b"),
          note="alternates 4096-token sliding-window and global layers; logit softcapping 50"),
    # gpt-oss states head_dim 64; hidden_size 2880 is not heads x head_dim.
    Model("gpt-oss-20b", {"num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                          "hidden_size": 2880}, _hf("openai/gpt-oss-20b"),
          note="alternates 128-token sliding-window and global layers; learned attention sinks"),
    Model("gpt-oss-120b", {"num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                           "hidden_size": 2880}, _hf("openai/gpt-oss-120b"),
          note="alternates 128-token sliding-window and global layers; learned attention sinks"),
    # MLA: q and k heads are qk_nope_head_dim + qk_rope_head_dim = 192 wide, v heads 128; decode with the
    # up-projections absorbed attends 576-wide keys (kv_lora_rank 512 + rope 64) and 512-wide values over 1 kv head.
    Model("deepseek-v3", {"num_attention_heads": 128, "num_key_value_heads": 128, "qk_nope_head_dim": 128,
                          "qk_rope_head_dim": 64, "v_head_dim": 128, "kv_lora_rank": 512, "hidden_size": 7168},
          _hf("deepseek-ai/DeepSeek-V3"),
          note="MLA: q/k head_dim 192, v 128; absorbed decode 576 / 512 over 1 kv head",
          pending="its attention (MLA) has q/k heads of 192 and v heads of 128 (absorbed decode: 576 and 512 "
                  "over 1 kv head), and a case has one head_dim for q, k and v: it waits for head_dim_v "
                  "(the attention-variants issue)"),
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
