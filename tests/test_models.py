"""Model presets: the table's values, ``attnbench models``, ``run --model`` and ``recommend --model`` on the table."""

import json

import pytest

from attnbench.cli import build_parser, main
from attnbench.errors import UserError
from attnbench.models import MODELS, lookup
from attnbench.recommend import Shape, model_shape
from attnbench.run_command import build_spec

# Transcribed from each model's public config.json (num_attention_heads, num_key_value_heads, head_dim or
# hidden_size / num_attention_heads): a change to the table must change this too, on purpose.
EXPECTED = {
    "llama-3.1-8b": (32, 8, 128),
    "llama-3.1-70b": (64, 8, 128),
    "mistral-7b": (32, 8, 128),
    "qwen2.5-7b": (28, 4, 128),
    "qwen2.5-72b": (64, 8, 128),
    "gemma-2-9b": (16, 8, 256),
    "gpt-oss-20b": (64, 8, 64),
    "gpt-oss-120b": (64, 8, 64),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_table_values(name):
    model = lookup(name)
    assert (model.heads_q, model.heads_kv, model.head_dim) == EXPECTED[name]
    assert model.heads_q % model.heads_kv == 0 and not model.pending
    assert model.source.startswith("https://huggingface.co/") and model.source.endswith("/config.json")


def test_deepseek_v3_attends_with_mla_head_dims_in_two_forms():
    model = lookup("deepseek-v3")
    assert (model.heads_q, model.heads_kv, model.head_dim) == (128, 128, 192)
    assert (model.config["qk_nope_head_dim"] + model.config["qk_rope_head_dim"], model.config["v_head_dim"]) == (192, 128)
    assert model.config["kv_lora_rank"] + model.config["qk_rope_head_dim"] == 576
    prefill, absorbed = model.case_fields({"batch": 1, "seq_q": 1, "seq_kv": 64, "mask": "causal"})
    assert (prefill["heads_kv"], prefill["head_dim"], prefill["head_dim_v"]) == (128, 192, 128)
    assert (absorbed["heads_q"], absorbed["heads_kv"], absorbed["head_dim"], absorbed["head_dim_v"]) == (128, 1, 576, 512)
    assert absorbed["scale"] == pytest.approx(192 ** -0.5)  # absorbed decode keeps the 192-wide scores' scale
    assert set(MODELS) == set(EXPECTED) | {"deepseek-v3"}


def test_gemma_and_gpt_oss_carry_their_variants_and_sliding_layers():
    gemma = lookup("gemma-2-9b").case_fields({"mask": "causal", "seq_q": 8})
    assert [(f["mask"], f.get("window"), f["softcap"]) for f in gemma] == [("causal", None, 50.0),
                                                                          ("sliding_window", 4096, 50.0)]
    oss = lookup("gpt-oss-20b").case_fields({"mask": "causal", "sinks": False})
    assert [(f["mask"], f.get("window"), f["sinks"]) for f in oss] == [("causal", None, True),
                                                                      ("sliding_window", 128, True)]
    # Without a causal mask the sliding form is the global one; a suite's own softcap stays.
    assert len(lookup("gpt-oss-20b").case_fields({"mask": "none"})) == 1
    assert lookup("gemma-2-9b").case_fields({"mask": "none", "softcap": 5.0}, keep={"softcap"})[0]["softcap"] == 5.0


def test_a_pending_preset_is_refused_with_its_reason(monkeypatch):
    from attnbench import models
    pending = models.Model("future-1", {"num_attention_heads": 8, "num_key_value_heads": 8, "hidden_size": 512},
                           "https://huggingface.co/x/blob/main/config.json", pending="needs a field Case lacks")
    monkeypatch.setitem(models.MODELS, "future-1", pending)
    with pytest.raises(ValueError, match="cannot be a case yet: needs a field Case lacks"):
        lookup("future-1")


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'llama-3.1-7b' \(did you mean .*'llama-3.1-8b'"):
        lookup("llama-3.1-7b")


def test_models_command_lists_the_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "gemma-2-9b" in out and "256" in out and "softcap=50" in out and "huggingface.co" in out
    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert {n: (m["heads_q"], m["heads_kv"], m["head_dim"]) for n, m in listed.items() if n in EXPECTED} == EXPECTED
    assert listed["deepseek-v3"]["head_dim"] == 192 and listed["deepseek-v3"]["variants"] == {"head_dim_v": 128}
    assert [f["name"] for f in listed["gpt-oss-20b"]["forms"]] == ["global", "sliding"]


SUITE = """\
name: m
defaults: {dtype: float32}
matrix:
  seq: [16, 32]
  heads_q: [2, 4]
  head_dim: 16
"""


def test_run_model_overrides_every_cases_heads(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)

    def spec(*flags):
        args = build_parser().parse_args(["run", str(suite), "--device", "cpu", "--no-measure-peaks", "--impl", "eager",
                                          "--output", str(tmp_path / "out"), *flags])
        return build_spec(args)[0]

    assert len(spec().cases) == 4
    cases = spec("--model", "qwen2.5-7b").cases
    # The heads_q sweep collapses: both of its values become the model's.
    assert [(c.heads_q, c.heads_kv, c.head_dim, c.seq_q) for c in cases] == [(28, 4, 128, 16), (28, 4, 128, 32)]
    with pytest.raises(UserError, match="--model qwen2.5-8b: unknown model .*did you mean 'qwen2.5-7b'"):
        spec("--model", "qwen2.5-8b")
    mla = spec("--model", "deepseek-v3").cases
    assert [(c.heads_kv, c.head_dim, c.value_dim) for c in mla] == [(128, 192, 128), (1, 576, 512)] * 2
    oss = spec("--model", "gpt-oss-20b").cases  # no mask: one form; every case takes the sinks
    assert len(oss) == 2 and all(c.sinks and c.heads_q == 64 for c in oss)
    assert main(["run", str(suite), "--model", "nope", "--output", str(tmp_path / "o2")]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_recommend_model_reads_the_shipped_table():
    assert model_shape("llama-3.1-70b") == Shape(64, 8, 128)
    assert model_shape("deepseek-v3") == Shape(128, 128, 192)
