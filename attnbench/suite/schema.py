"""The suite schema: every key a suite may hold, its type, default and meaning.

``SCHEMA`` drives validation and, through ``schema_markdown()``, the reference
in docs/suites.md, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attnbench.case import BIASES, DTYPES, PASSES
from attnbench.masks import MASKS
from attnbench.quality.config import MIN_STEPS, PRESETS
from attnbench.quality.tasks import TASKS
from attnbench.suite.settings import DEFAULT_FLOORS, Correctness, Timing


@dataclass(frozen=True)
class Key:
    """One suite key: its type, default, allowed values and meaning.

    ``type`` is one of string, integer, number, boolean (checked generically) or
    a descriptive type whose key has its own check. ``allowed`` and
    ``default_text`` override the text derived for the reference.
    """

    type: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    exclusive: bool = False
    nullable: bool = False
    required: bool = False
    allowed: str = ""
    default_text: str = ""

    def describe(self) -> str:
        """What values the key accepts, in words."""
        if self.allowed:
            return self.allowed
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        else:
            text = {"string": "a string", "integer": "an integer", "number": "a number",
                    "boolean": "true or false"}[self.type]
            if self.minimum is not None:
                text += f" {'>' if self.exclusive else '>='} {self.minimum:g}"
        return text + (" or null" if self.nullable else "")


AXES: dict[str, Key] = {
    "batch": Key("integer", 1, "Sequences per batch.", minimum=1),
    "tokens": Key("integer", None, "Key/value tokens per batch: sets batch = max(1, tokens // seq_kv), so "
                  "batch x seq stays constant as in FlashAttention's benchmark (16k). Replaces batch.", minimum=1),
    "heads_q": Key("integer", 8, "Query heads.", minimum=1),
    "model_dim": Key("integer", None, "heads_q x head_dim: sets heads_q = model_dim // head_dim (must divide "
                     "exactly), so the model width stays constant. Replaces heads_q.", minimum=1),
    "heads_kv": Key("integer", None, "Key/value heads; fewer than heads_q (dividing it) is GQA, 1 is MQA.",
                    default_text="heads_q", minimum=1),
    "seq": Key("integer", None, "Shorthand that sets seq_q and seq_kv to the same value.", minimum=1),
    "seq_q": Key("integer", None, "Query length.", default_text="required (or seq)",
                   minimum=1),
    "seq_kv": Key("integer", None, "Key/value length; longer than seq_q is a prefix cache or cross-attention.",
                  default_text="seq_q", minimum=1),
    "seqlens": Key("list of integers", None, "A packed (ragged) self-attention batch, one length per sequence: sets "
                   "seqlens_q = seqlens_kv; batch is their number, seq_q and seq_kv their longest. In matrix, a list "
                   "of such lists is one case each.", allowed="a list of integers >= 1"),
    "seqlens_q": Key("list of integers", None, "Query lengths of a packed batch; the keys' are seqlens_kv or, "
                     "without it, seq_kv repeated (chunks of queries over caches of one length).",
                     allowed="a list of integers >= 1"),
    "seqlens_kv": Key("list of integers", None, "Key/value lengths of a packed batch; the queries' are seqlens_q "
                      "or, without it, seq_q repeated (seq_q 1: one decode step over caches of these lengths).",
                      allowed="a list of integers >= 1"),
    "lengths": Key("mapping", None, "Draws batch lengths of a packed self-attention batch (documents packed for "
                   "training) from a distribution (see lengths), the same on every machine; needs batch.",
                   allowed=", ".join(("dist", "mean", "min", "max", "sigma", "seed"))),
    "batch_spec": Key("string", None, "A packed batch in vLLM's batch-spec grammar: groups [count]q<q_len>[s<kv_len>] "
                      "joined by _, k = x1024 (2q2k_32q1s1k: 2 prefills of 2048 tokens and 32 decodes over 1024-token "
                      "caches; see Ragged and paged batches).", allowed="a batch spec"),
    "page_size": Key("integer", None, "Pages the KV cache: k and v are pools of page_size-token pages read through a "
                     "shuffled block table (a dense case becomes a packed one of equal lengths). Forward only: pass "
                     "must be fwd. Null leaves the cache contiguous.", nullable=True, minimum=1),
    "head_dim": Key("integer", 64, "Dimension of each head.", minimum=1),
    "model": Key("string", None, "A model preset (`attnbench models` lists them, each with the config.json it "
                 "is transcribed from): sets heads_q, heads_kv and head_dim to the model's, so a list in matrix is "
                 "one set of cases per model; `attnbench validate` says which cases are each model's. A more "
                 "specific heads_q, heads_kv, head_dim or model_dim replaces that field alone (the case is then no "
                 "model's). A model's case also takes the model's variants (head_dim_v, softcap, sinks) unless the "
                 "suite sets them, and one case per form where its layers attend in several ways: gemma-2 and "
                 "gpt-oss a global and a sliding-window one (a causal mask becomes their window), deepseek-v3 "
                 "prefill 192/128 and absorbed decode 576/512 over one kv head. `attnbench run --model NAME` "
                 "makes every case the model's instead.",
                 allowed="a preset name"),
    "head_dim_v": Key("integer", None, "Head dim of v and the output when it differs from q's and k's (MLA: "
                      "192/128, absorbed decode 576/512). Null: head_dim.", nullable=True, minimum=1),
    "softcap": Key("number", None, "Caps the scaled scores: softcap x tanh(score / softcap), before any bias and "
                   "the mask (Gemma 2: 50). Null: none.", nullable=True, minimum=0, exclusive=True),
    "bias": Key("string", None, "A position bias added to the scores: alibi (-slope_h x |pos_q - pos_k|, the "
                "standard geometric slopes, positions bottom-right aligned). Null: none.", choices=BIASES,
                nullable=True),
    "sinks": Key("boolean", False, "One logit per query head joins every row's softmax denominator and "
                 "contributes no value (gpt-oss's attention sinks); its values are drawn per trial."),
    "dtype": Key("string", "float32", "Element type of q, k and v; the fp8 ones (float8_e4m3fn, float8_e5m2) are "
                 "quantised per sequence and kv head, passed with their descales, forward only, and give a "
                 "bfloat16 output.", choices=tuple(DTYPES)),
    "mask": Key("string", "none", "Attention mask, bottom-right aligned: causal, sliding_window (needs window) "
                "or block_sparse (needs block).", choices=MASKS),
    "window": Key("integer", None, "Keys each query sees under sliding_window, itself included. Dropped for "
                  "other masks (duplicate cases that leaves are removed).", nullable=True, minimum=1),
    "block": Key("integer", None, "Block size in positions under block_sparse: each query sees its own block up "
                 "to itself, the blocks 1, 2, 4, 8, ... blocks back, and the first block. Dropped for other masks.",
                 nullable=True, minimum=1),
    "scale": Key("number", None, "Softmax scale; null means 1/sqrt(head_dim).", minimum=0, exclusive=True,
                 nullable=True),
    "pass": Key("string", "fwd", "What is timed: the forward call, the backward call alone, or both.",
                choices=PASSES),
}

LENGTHS_KEYS: dict[str, Key] = {
    "dist": Key("string", None, "How lengths are drawn: fixed (every length is mean), uniform (integers in "
                "[min, max], each equally likely) or lognormal (documents: many short, a few long).",
                choices=("fixed", "uniform", "lognormal"), required=True),
    "mean": Key("integer", None, "fixed: every length. lognormal: the distribution's mean (mu = ln(mean) - "
                "sigma^2 / 2) before clipping. Not used by uniform.", minimum=1,
                default_text="required (fixed, lognormal)"),
    "min": Key("integer", 1, "Shortest length: uniform and lognormal draws are clipped to [min, max].", minimum=1),
    "max": Key("integer", None, "Longest length (the case's seq_q is the longest drawn).", minimum=1,
               default_text="required (uniform, lognormal)"),
    "sigma": Key("number", 1.0, "lognormal: the standard deviation of the log length; larger is more skewed.",
                 minimum=0, exclusive=True),
    "seed": Key("integer", 0, "Another seed draws other lengths from the same distribution.", minimum=0),
}

IMPLEMENTATION_KEYS: dict[str, Key] = {
    "include": Key("glob or list of globs", ("*",), "Implementations to run, by fnmatch pattern "
                   "(e.g. sdpa* matches sdpa.flash).", allowed="implementation names or patterns"),
    "exclude": Key("glob or list of globs", (), "Implementations left out even when include matches them.",
                   allowed="implementation names or patterns", default_text="none"),
}

CORRECTNESS_KEYS: dict[str, Key] = {
    "seeds": Key("integer", Correctness.seeds, "Random inputs each output is checked on.", minimum=3),
    "tolerance_factor": Key("number", Correctness.tolerance_factor, "k in the pass rule: error <= k x error "
                            "of eager in the same dtype + floor.", minimum=1),
    "floors": Key("mapping dtype -> number", DEFAULT_FLOORS, "Absolute error always allowed, per dtype; "
                  "dtypes not named keep their default.", allowed="dtype names to numbers >= 0"),
}

TIMING_KEYS: dict[str, Key] = {
    "warmup": Key("integer", Timing.warmup, "Untimed calls before timing starts, at least (on CPU, a checked "
                  "call of 0.25 s or more already was one).", minimum=0),
    "warmup_ms": Key("number", Timing.warmup_ms, "The warm-up lasts at least this long: fast calls get more than "
                     "warmup calls, a call slower than warmup_ms / warmup gets exactly warmup.", minimum=0),
    "min_time_s": Key("number", Timing.min_time_s, "CPU: each worker process takes timed samples until they add "
                      "up to at least this long (a sample loops a fast call to about 20 ms, calibrated once).",
                      minimum=0, exclusive=True),
    "repeats": Key("integer", Timing.repeats, "CPU: at least this many timed samples in each worker process "
                   "(a call slower than min_time_s gets exactly this many).", minimum=1),
    "processes": Key("integer", Timing.processes, "CPU: worker processes, so one process's luck (allocator, "
                     "frequency) does not decide the result.", minimum=2),
    "cuda_repeats": Key("integer", Timing.cuda_repeats, "CUDA: at least this many timed calls in each worker "
                        "process, each between CUDA events (a call slower than cuda_time_ms / cuda_repeats gets "
                        "exactly this many).", minimum=5),
    "cuda_time_ms": Key("number", Timing.cuda_time_ms, "CUDA: timed calls add up to about this long in each "
                        "worker process (their number estimated from the warm-up), so a 20 us call gets "
                        "thousands and a 1 s call cuda_repeats.", minimum=0, exclusive=True),
    "cuda_max_repeats": Key("integer", Timing.cuda_max_repeats, "CUDA: at most this many timed calls in each "
                            "worker process (cuda_repeats wins if larger).", minimum=1),
    "flush_l2": Key("boolean", Timing.flush_l2, "CUDA: overwrite the L2 cache before each timed call, so "
                    "inputs are read from memory as in a real model."),
    "cuda_graph": Key("boolean", Timing.cuda_graph, "CUDA: capture the call in a CUDA graph and replay it, "
                      "removing launch gaps between its kernels; fwd and fwd+bwd only (bwd cases are timed "
                      "without one, and the record says so)."),
}

TASK_KEYS: dict[str, Key] = {
    "names": Key("task name or list of names", tuple(TASKS), "Synthetic tasks to train on (see Methodology).",
                 allowed=", ".join(TASKS)),
    "size": Key("string", None, "Preset of sequence length, model, batch and steps of each task: tiny (tests), "
                "cpu (a 2-core CPU), cuda (a GPU).", choices=tuple(PRESETS), default_text="the device's"),
    "seeds": Key("integer", 3, "Training runs per task and implementation, seeds 0, 1, ... (plus --seed), each "
                 "with other weights and data: their mean and spread are reported.", minimum=3),
    "steps": Key("integer", None, "Training steps, replacing the preset's.", minimum=MIN_STEPS,
                 default_text="the preset's"),
    "eval_size": Key("integer", None, "Held-out examples each trained model is scored on, replacing the preset's.",
                     minimum=1, default_text="the preset's"),
    "threads": Key("integer", 1, "Torch CPU threads of each training run; null leaves torch's default (one per "
                   "core). The models are small: on a small or shared machine a second thread mostly waits.",
                   minimum=1, nullable=True),
}

HARDWARE_KEYS: dict[str, Key] = {
    "gpu_type": Key("string", None, "The GPUs a fleet run asks for, as the cluster names them: on Ray the "
                    "accelerator type (nodes advertising accelerator_type:TYPE, e.g. H100), on Slurm the node "
                    "feature given as --constraint (e.g. h100). --ray-accelerator-type and --slurm-constraint "
                    "replace it.", allowed="letters, digits, '.', '_' and '-'"),
    "gpus_per_job": Key("integer", None, "Slurm: GPUs per job, each measuring one case at a time. --slurm-gres "
                        "replaces it. (A Ray task takes one GPU.)", minimum=1, default_text="1 on CUDA"),
    "partition": Key("string", None, "Slurm: the partition jobs are submitted to. --slurm-partition replaces it.",
                     allowed="letters, digits, '.', '_' and '-'", default_text="the cluster's default"),
}

TOP_KEYS: dict[str, Key] = {
    "name": Key("string", None, "Suite name, shown in reports and used in result file names.", required=True,
                allowed="letters, digits, '.', '_' and '-'"),
    "description": Key("string", "", "What the suite measures and why.", default_text="empty"),
    "implementations": Key("mapping", None, "Which implementations run (see implementations).",
                           allowed="include, exclude", default_text="all"),
    "baseline": Key("string", "sdpa", "Implementation that speedups are computed against.",
                    allowed="an implementation name"),
    "defaults": Key("mapping", None, "A single value for any axis, used where no matrix sets it.",
                    allowed="axes (single values)", default_text="built-in axis defaults"),
    "matrix": Key("mapping", None, "Axes, each a value or a list; the product of the lists is the cases.",
                  allowed="axes (values or lists)", default_text="none"),
    "include_cases": Key("list of mappings", None, "Extra cases a product cannot express (e.g. decode at "
                         "several cache lengths), each a mapping of single axis values over defaults.",
                         allowed="list of axis mappings", default_text="none"),
    "correctness": Key("mapping", None, "How outputs are checked (see correctness).",
                       allowed=", ".join(CORRECTNESS_KEYS), default_text="see correctness"),
    "timing": Key("mapping", None, "How calls are timed (see timing).", allowed=", ".join(TIMING_KEYS),
                  default_text="see timing"),
    "timeout_s": Key("number", 300.0, "Seconds one implementation may spend on one case before it is "
                     "stopped and recorded as a timeout.", minimum=0, exclusive=True),
    "memory_budget": Key("number or size", 0.8, "Device memory one case may use.",
                         allowed="a fraction in (0, 1] of free memory, or a size such as '8GiB'"),
    "tasks": Key("mapping", None, "Quality tasks: a small transformer trained with each implementation as its "
                 "attention (see tasks).", allowed=", ".join(TASK_KEYS), default_text="none"),
    "cpu": Key("mapping", None, "Overrides on CPU (see cpu / cuda).", allowed="device section keys",
               default_text="none"),
    "cuda": Key("mapping", None, "Overrides on CUDA GPUs (see cpu / cuda).", allowed="device section keys",
                default_text="none"),
    "hardware": Key("mapping", None, "What a fleet run (--executor slurm or ray) asks its cluster for (see "
                    "hardware).", allowed=", ".join(HARDWARE_KEYS), default_text="none"),
}

SECTION_KEYS: dict[str, Key] = {
    "defaults": Key("mapping", None, "Axes over the suite's defaults and matrix.",
                    allowed="axes (single values)", default_text="none"),
    "matrix": Key("mapping", None, "Axes over the suite's defaults and matrix; an axis set here replaces the "
                  "suite's.", allowed="axes (values or lists)", default_text="none"),
    "include_cases": Key("list of mappings", None, "Replaces the suite's include_cases.",
                         allowed="list of axis mappings", default_text="suite's"),
    "implementations": Key("mapping", None, "include and exclude given here replace the suite's.",
                           allowed="include, exclude", default_text="suite's"),
    "baseline": Key("string", None, "Replaces the suite's baseline.", allowed="an implementation name",
                    default_text="suite's"),
    "correctness": Key("mapping", None, "Keys given here replace the suite's; floors merge per dtype.",
                       allowed=", ".join(CORRECTNESS_KEYS), default_text="suite's"),
    "timing": Key("mapping", None, "Keys given here replace the suite's.", allowed=", ".join(TIMING_KEYS),
                  default_text="suite's"),
    "timeout_s": Key("number", None, "Replaces the suite's timeout_s.", minimum=0, exclusive=True,
                     default_text="suite's"),
    "memory_budget": Key("number or size", None, "Replaces the suite's memory_budget.",
                         allowed=TOP_KEYS["memory_budget"].allowed, default_text="suite's"),
    "tasks": Key("mapping", None, "Keys given here replace the suite's; tasks here alone declare tasks on this "
                 "device only.", allowed=", ".join(TASK_KEYS), default_text="suite's"),
}

SCHEMA: dict[str, dict[str, Key]] = {
    "top level": TOP_KEYS,
    "implementations": IMPLEMENTATION_KEYS,
    "axes": AXES,
    "lengths": LENGTHS_KEYS,
    "correctness": CORRECTNESS_KEYS,
    "timing": TIMING_KEYS,
    "tasks": TASK_KEYS,
    "cpu / cuda": SECTION_KEYS,
    "hardware": HARDWARE_KEYS,
}
"""Every key a suite may hold, by the mapping it sits in. Axes are the keys of
``matrix``, ``defaults`` and each ``include_cases`` entry."""

_NOTES: dict[str, str] = {
    "top level": "A suite file is a YAML mapping. Unknown keys are errors.",
    "implementations": "Selects implementations by name; the baseline and eager should usually be among them.",
    "axes": (
        "Keys of `matrix` (a value or a list each), `defaults` and `include_cases` entries (a single value "
        "each). Each case field takes its value from the most specific place that sets it: the device "
        "section's matrix, its defaults, the suite's matrix, the suite's defaults, the built-in default. "
        "`seq` sets seq_q and seq_kv, `tokens` sets batch, `model_dim` sets heads_q, `model` sets heads_q, "
        "heads_kv and head_dim; two spellings of one "
        "field in the same mapping are an error. Cases are ordered with seq varying fastest and pass slowest. "
        "seqlens, seqlens_q, seqlens_kv, lengths and batch_spec give a packed batch's lengths (see Ragged and "
        "paged batches): one of them per mapping (seqlens_q with seqlens_kv), and the most specific mapping "
        "that gives lengths gives all of them."
    ),
    "lengths": (
        "The keys of a `lengths` mapping. Lengths are drawn with Python's `random.Random` seeded from the "
        "mapping's own values (dist, mean, min, max, sigma, seed), never from the machine or `--seed`: the "
        "lengths are part of the case, so the same mapping gives the same batch everywhere, and batch n's "
        "lengths are the first n of batch n + 1's. fixed takes mean; uniform takes min and max; lognormal "
        "takes mean, max, and optionally min and sigma."
    ),
    "correctness": "An output passes when error <= tolerance_factor x eager's error in the same dtype + floor.",
    "timing": "Keys marked CPU apply to CPU runs and keys marked CUDA to GPU runs; warmup and warmup_ms apply to both.",
    "tasks": (
        "Quality tasks train a small transformer with each implementation as its attention, once per seed, and "
        "score it on held-out data: one record per task and implementation (see Results). A suite may declare "
        "tasks and no cases. Implementations without backward are unsupported; an exact implementation whose "
        "accuracy disagrees with eager's is incorrect. timeout_s applies to each seed's training run."
    ),
    "cpu / cuda": "A device section overrides the suite on that device. Both are validated whatever the machine.",
    "hardware": (
        "Read by the fleet executors only (`--executor slurm`, `--executor ray`, see "
        "[executors](executors.md)); a local run measures on the machine it has. A flag given on the command "
        "line replaces the key it names. A gpu_type or gpus_per_job makes `--device auto` mean cuda."
    ),
}


def schema_markdown() -> str:
    """SCHEMA as a markdown reference: one table per mapping."""
    out = []
    for title, keys in SCHEMA.items():
        out += [f"### {title}", "", _NOTES[title], "", "| key | type | default | allowed | description |",
                "| --- | --- | --- | --- | --- |"]
        for name, key in keys.items():
            cells = (f"`{name}`", key.type, _default_text(key), key.describe(), key.doc)
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _default_text(key: Key) -> str:
    if key.default_text:
        return key.default_text
    if key.required:
        return "required"
    value = key.default
    if value is None:
        return "not set"
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}: {v:g}" for k, v in value.items())
    elif isinstance(value, tuple):
        text = ", ".join(value)
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"`{text}`"
