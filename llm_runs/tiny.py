"""A tiny random Qwen3 and a byte-level BPE tokenizer trained locally: the CPU stand-in for Qwen3-8B.

Nothing is downloaded. The tokenizer has Qwen's special tokens and a ChatML chat template that, like
Qwen3's, closes an empty `<think></think>` block in the generation prompt when `enable_thinking=False`.
Both are written with `save_pretrained` and read back through the real `from_pretrained` path.
"""

from __future__ import annotations

from pathlib import Path

SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 32, "intermediate_size": 128}
"""The tiny Qwen3's architecture: 2 layers, 64 wide, 4 query / 2 key-value heads of size 32 (the smallest head
vLLM's CPU build runs). The one definition: `model.tiny_shape`'s default and `smoke --shape tiny` read it."""
VOCAB_SIZE = 512
"""The locally trained tokenizer's vocabulary."""
MAX_POSITIONS = 4096
"""The tiny model's context length."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def build_tokenizer(corpus: list[str], vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE on `corpus` and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>", "<think>", "</think>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build(out: str | Path, corpus: list[str], shape: dict | None = None, seed: int = 0,
          vocab_size: int = VOCAB_SIZE) -> Path:
    """Write a tiny random Qwen3 and its tokenizer to `out` (a directory `from_pretrained` reads); `shape`
    overrides entries of `SHAPE`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out)
    tokenizer = build_tokenizer(corpus, vocab_size)
    shape = dict(shape or {})
    config = Qwen3Config(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **{**SHAPE,
                            # a wider init than Qwen's 0.02, so that a random model's predictions depend on
                            # its context and the teacher's differ visibly from the student's
                            "initializer_range": 0.2, **shape})
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
