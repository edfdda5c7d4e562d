"""A tiny random-weight Llama and its tokenizer, written to a directory.

For tests and benchmarks of the ``local`` provider without a model hub: a
byte-level BPE tokenizer trained with ``tokenizers`` on a few sentences (so
any text, multi-byte characters and emoji included, encodes), a chat
template, and a Llama-architecture model with random weights. The directory
loads as a user's model does, with ``from_pretrained``. Needs the ``local``
extra.
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "The Eiffel Tower is located in Paris, France.",
    "How tall is it? About 330 metres, antennas included.",
    "Über café naïve façade, ünïcödé: 日本語のテキスト, emoji 🚀✨ and more.",
    "hello world, hello there, how are you today?",
    "user: hi\nassistant: hello, how can I help you?",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_model(
    directory: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab: int = 400,
    seed: int = 0,
    chat_template: bool = True,
) -> Path:
    """Write the tokenizer and the model to ``directory``; returns it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(SENTENCES * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory
