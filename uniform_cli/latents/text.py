"""Caption -> token embeddings with a transformers text encoder (T5-v1.1-XXL by default).

A checkpoint is a hub id (read from the local Hugging Face cache only) or a folder holding the model's
config.json + weights and its tokenizer files, as `save_pretrained` writes them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from uniform_cli.pretrained import PretrainedError

DEFAULT_TEXT_ENCODER = "DeepFloyd/t5-v1_1-xxl"
WHAT = "text encoder"

# model types whose encoder loads on its own as `T5EncoderModel` (no decoder weights in memory)
_T5_FAMILY = {"t5", "mt5", "umt5"}

_PROBE = "a the and"  # words every English vocabulary holds


class TextEncoderError(PretrainedError):
    """A text encoder that is missing or cannot be used; the message says what to download and where."""


class TextEncoder:
    """Tokenizer + encoder: `__call__(texts)` -> (embeddings `B L D` float32, mask `B L` bool).

    Captions are padded to the longest one in the batch; a caption longer than `max_length` tokens is cut at
    `max_length` (the paper's 300), the only place where text is truncated. Embeddings at padded positions are
    zeroed, and the valid positions do not depend on the padding (the encoder's attention mask hides it).
    """

    def __init__(self, tokenizer, model: torch.nn.Module, max_length: int = 300, clips_per_call: int = 32) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length
        self.clips_per_call = clips_per_call

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path = DEFAULT_TEXT_ENCODER,
        max_length: int = 300,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        clips_per_call: int = 32,
    ) -> "TextEncoder":
        """Load the tokenizer and the encoder; T5-family models load only their encoder (`T5EncoderModel`).
        The name "hash" (or "hash:DIM") gives the weight-free `HashTextEncoder` instead.

        Raises TextEncoderError saying what to download and where when the model or its tokenizer is missing.
        """
        if HashTextEncoder.names(str(id_or_path)):
            return HashTextEncoder.from_name(str(id_or_path), max_length=max_length, device=device)
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        from uniform_cli.pretrained import download_command, resolve_pretrained

        folder = resolve_pretrained(id_or_path, [], WHAT, example=DEFAULT_TEXT_ENCODER, error=TextEncoderError)
        given_folder = Path(id_or_path).expanduser().is_dir()
        hint = (
            f"download it with `{download_command(DEFAULT_TEXT_ENCODER if given_folder else str(id_or_path))}` "
            f"(it goes into the Hugging Face cache, $HF_HOME), or pass a folder holding config.json, the weights "
            f"and the tokenizer files"
        )
        if not (folder / "config.json").is_file():
            raise TextEncoderError(f"{WHAT}: {folder} lacks config.json; {hint}")
        source = str(folder)
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            if config.model_type in _T5_FAMILY:
                model = T5EncoderModel.from_pretrained(source, local_files_only=True, dtype=dtype)
            else:
                model = AutoModel.from_pretrained(source, local_files_only=True, dtype=dtype)
                if getattr(model.config, "is_encoder_decoder", False):
                    model = model.get_encoder()
        except (OSError, ValueError) as err:
            raise TextEncoderError(f"cannot load the text encoder {source!r} ({err}); {hint}") from err
        if tokenizer.pad_token is None:
            raise TextEncoderError(f"the tokenizer of {source!r} has no pad token; batched captions need one")
        # transformers builds a placeholder vocabulary when the tokenizer files are absent; catch it here
        probe = tokenizer(_PROBE)["input_ids"]
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in probe:
            raise TextEncoderError(
                f"the tokenizer of {source!r} maps common words to {tokenizer.unk_token!r}: its tokenizer files "
                f"(tokenizer.json, spiece.model, ...) are missing or wrong; {hint}"
            )
        return cls(tokenizer, model.to(device), max_length=max_length, clips_per_call=clips_per_call)

    @property
    def dim(self) -> int:
        """Width D of the embeddings (4096 for T5-v1.1-XXL)."""
        config = self.model.config
        return int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (embeddings `B L D` float32, mask `B L` bool), L = longest caption in tokens, at most max_length."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("TextEncoder expects a list of caption strings")
        if not texts:
            raise ValueError("TextEncoder got no captions")
        tokens = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids = tokens["input_ids"].to(self.device)  # B L
        mask = tokens["attention_mask"].to(self.device).bool()  # B L
        outs = []
        for ids_chunk, mask_chunk in zip(ids.split(self.clips_per_call), mask.split(self.clips_per_call)):
            hidden = self.model(input_ids=ids_chunk, attention_mask=mask_chunk).last_hidden_state  # B L D
            outs.append(hidden.float() * mask_chunk[..., None])
        return torch.cat(outs), mask


HASH_NAME = "hash"
HASH_DIM = 32
HASH_VOCAB = 4096


class HashTextEncoder:
    """A weight-free text encoder for the demo: every word of a caption -> a fixed pseudo-random vector.

    `codec.text_encoder = "hash"` (32 wide) or `"hash:DIM"`. A caption is lower-cased and split into words
    (runs of letters and digits); word w becomes row blake2b(w) mod 4096 of a table drawn once from a fixed
    seed, so the same word gives the same vector on every machine and different words almost surely differ.
    It knows no language: captions that share words get related embeddings, nothing more. That is enough to
    tell a model which of a few labelled kinds of clip to make, which is all the demo asks of it. Same
    interface as `TextEncoder`: `__call__(texts)` -> (embeddings `B L D` float32, mask `B L` bool).
    """

    def __init__(self, dim: int = HASH_DIM, max_length: int = 300, device: str | torch.device = "cpu") -> None:
        if dim < 1 or max_length < 1:
            raise ValueError(f"hash text encoder needs a positive width and max_length, got {dim} and {max_length}")
        self.max_length = max_length
        self.model = HashEmbedding(dim).to(device)

    @staticmethod
    def names(id_or_path: str) -> bool:
        """Whether a `codec.text_encoder` value names this encoder ("hash" or "hash:DIM")."""
        return id_or_path == HASH_NAME or id_or_path.startswith(HASH_NAME + ":")

    @classmethod
    def from_name(cls, name: str, max_length: int = 300, device: str | torch.device = "cpu") -> "HashTextEncoder":
        """"hash" or "hash:DIM" -> an encoder of that width."""
        _, _, width = name.partition(":")
        if width and not width.isdigit():
            raise TextEncoderError(f"text encoder {name!r}: write 'hash' or 'hash:DIM' with DIM a positive integer")
        return cls(int(width) if width else HASH_DIM, max_length=max_length, device=device)

    @property
    def dim(self) -> int:
        return self.model.table.shape[1]

    @property
    def device(self) -> torch.device:
        return self.model.table.device

    @staticmethod
    def words(text: str) -> list[str]:
        import re

        return re.findall(r"[a-z0-9]+", text.lower())

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (embeddings `B L D` float32, mask `B L` bool), L = most words in a caption (at least 1)."""
        import hashlib

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("HashTextEncoder expects a list of caption strings")
        if not texts:
            raise ValueError("HashTextEncoder got no captions")
        words = [self.words(t)[: self.max_length] for t in texts]
        length = max(1, max(len(w) for w in words))
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, row in enumerate(words):
            for j, word in enumerate(row):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                ids[i, j] = int.from_bytes(digest, "little") % HASH_VOCAB
                mask[i, j] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.model(ids) * mask[..., None], mask


class HashEmbedding(torch.nn.Module):
    """The fixed table of `HashTextEncoder`: `HASH_VOCAB x D` unit-variance rows from a fixed seed (a buffer, not
    a parameter: nothing here is learned or loaded)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        table = torch.randn(HASH_VOCAB, dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("table", table)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]
