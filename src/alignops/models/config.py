"""Which model and tokenizer a run starts from, and how prompts become model input.

Built from ``conf/base/parameters_model.yml`` (key ``model``) with
``ModelConfig(**params)``; every stage that loads or builds a model reads it, so
the policy, the reward model and the reference model agree on the tokenizer and
the prompt format.
"""

from __future__ import annotations

from dataclasses import dataclass

SCRATCH = "scratch"
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True)
class ModelConfig:
    """A base model (``scratch`` or a Hugging Face path / hub id) and its prompt format."""

    base: str = SCRATCH
    """``scratch`` builds the tiny Llama below and trains a tokenizer on the run's own
    text, so the default run needs nothing from a hub. Anything else is a local folder
    or a hub id handed to ``from_pretrained`` (safetensors only)."""
    trust_remote_code: bool = False
    """Lets ``from_pretrained`` execute Python shipped with a checkpoint. Off unless a
    configuration turns it on for a model it trusts."""
    dtype: str = "float32"
    """Weights' dtype when loading ``base``; float32 on CPU. Mixed precision during
    training is the stage's ``mixed_precision``, not this."""

    vocab_size: int = 2048
    """Scratch tokenizer size: enough byte-level BPE merges to make most of the world's
    words one token. Half of it would make every text longer and cancel the smaller
    softmax's saving (docs/tuning.md)."""
    tokenizer_min_frequency: int = 2
    """A merge must occur this often in the training text; keeps one-off ids and
    amounts from taking vocabulary slots."""
    hidden_size: int = 64
    """Scratch width. At an equal CPU budget width 64 trains for more epochs than 128 and
    reached a lower held-out loss, and every later stage (reward model, PPO sampling,
    DPO) runs faster per token (docs/tuning.md)."""
    num_layers: int = 4
    """Scratch depth. Copying a slot (an order number, a date) from the prompt needs an
    induction-style circuit, which takes two layers; four learn it more reliably."""
    num_heads: int = 4
    """Attention heads (head size 16 at width 64); must divide ``hidden_size``."""
    intermediate_size: int = 192
    """MLP width, 3x hidden as in Llama's SwiGLU (three matrices, not two)."""
    max_position_embeddings: int = 256
    """Longest sequence the scratch model can see; prompt + reply must fit."""
    tie_word_embeddings: bool = True
    """Share input and output embeddings: at this size the vocabulary is over a third
    of the parameters, and tying halves it."""

    prompt_template: str = "\n\nHuman: {prompt}\n\nAssistant:"
    """How a canonical prompt becomes model input when the tokenizer has no chat template
    (with one, the template renders the prompt's messages: ``alignops.models.chat``). The
    world's prompts are bare questions, so they are wrapped in the HH dialogue format;
    HH-RLHF prompts already carry it, so an HH environment sets ``"{prompt}"``."""
    response_prefix: str = " "
    """Put in front of every response when there is no chat template, and removed from
    generated text. Canonical responses have no leading space (ingestion strips HH's),
    while a byte-level BPE learns " word" tokens: the space belongs to the reply's first
    token, not to the end of the prompt. The reply is tokenised after its prompt, so a
    SentencePiece tokenizer reads the space as part of the first word, not as a token."""
    max_prompt_tokens: int = 64
    """Prompts are cut to their LAST this-many tokens (the question is at the end of a
    conversation). 64 leaves room above the world's longest prompt with the template."""
    max_response_tokens: int = 160
    """Responses are cut to their first this-many tokens, EOS included; a cut response
    gets no EOS, so the model is never taught to stop mid-sentence. 160 leaves room
    above the world's longest reply."""

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("model.base must be 'scratch', a local path or a hub id")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"model.prompt_template needs a '{{prompt}}' field: {self.prompt_template!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.vocab_size < 256 + 2:
            raise ValueError(f"vocab_size must hold the 256 bytes and 2 special tokens, got {self.vocab_size}")
        if min(self.hidden_size, self.num_layers, self.intermediate_size, self.max_prompt_tokens) < 1:
            raise ValueError("model sizes and token limits must be positive")
        if self.max_response_tokens < 2:
            raise ValueError("max_response_tokens must leave room for a token and EOS")
        if self.is_scratch and self.max_prompt_tokens + self.max_response_tokens > self.max_position_embeddings:
            raise ValueError(
                f"max_prompt_tokens + max_response_tokens ({self.max_prompt_tokens} + "
                f"{self.max_response_tokens}) exceeds max_position_embeddings ({self.max_position_embeddings})"
            )

    @property
    def is_scratch(self) -> bool:
        return self.base == SCRATCH

    @property
    def max_length(self) -> int:
        """Longest prompt + response sequence."""
        return self.max_prompt_tokens + self.max_response_tokens

    def format_prompts(self, prompts: list[str]) -> list[str]:
        """Canonical prompts in the plain template (what ``Renderer`` gives without a chat template)."""
        return [self.prompt_template.format(prompt=p) for p in prompts]
