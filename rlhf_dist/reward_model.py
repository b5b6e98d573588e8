"""The reward model r(x, y): a separate copy of the backbone, a scalar head on the last
real token, and a trainable gain and bias (PAPER.md section 2a)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rlhf_dist.config import ModelConfig
from rlhf_dist.models import SplitLM, last_real_index, load_causal_lm, new_reward_head

HEAD_FILE = "reward_head.pt"


class RewardModel(nn.Module):
    def __init__(self, lm: SplitLM, seed: int = 0):
        super().__init__()
        self.lm = lm
        self.head = new_reward_head(lm.hidden_size, torch.Generator().manual_seed(seed))
        self.gain = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.lm.trainable_parameters() + list(self.head.parameters()) + [self.gain, self.bias]

    def raw(self, tokens: torch.Tensor, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) head output at the last non-pad token, before gain and bias."""
        hidden = self.lm.hidden(tokens, features)                      # (B, T, C)
        idx = last_real_index(tokens != self.lm.pad_id)                # (B,)
        h_last = hidden[torch.arange(tokens.shape[0]), idx]            # (B, C)
        return self.head(h_last).squeeze(-1)

    def forward(self, tokens: torch.Tensor, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.gain * self.raw(tokens, features) + self.bias

    def set_normalisation(self, gain: float, bias: float) -> None:
        with torch.no_grad():
            self.gain.fill_(gain)
            self.bias.fill_(bias)

    # -- weights that move between processes: what trains, plus head, gain, bias ----------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {"lm." + k: v for k, v in self.lm.trainable_state().items()}
        state.update({"head.weight": self.head.weight, "head.bias": self.head.bias,
                      "gain": self.gain, "bias": self.bias})
        return {k: v.detach().clone() for k, v in state.items()}

    def load_trainable_state(self, state: dict) -> None:
        self.lm.load_trainable_state({k[3:]: v for k, v in state.items() if k.startswith("lm.")})
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(state["head.weight"]))
            self.head.bias.copy_(torch.as_tensor(state["head.bias"]))
            self.gain.copy_(torch.as_tensor(state["gain"]))
            self.bias.copy_(torch.as_tensor(state["bias"]))

    def save(self, folder: Path, meta: Optional[dict] = None) -> None:
        """A Hugging Face folder for the backbone, plus the head, gain and bias beside it."""
        folder = Path(folder)
        self.lm.full.save_pretrained(folder)
        torch.save({"head.weight": self.head.weight.detach(), "head.bias": self.head.bias.detach(),
                    "gain": self.gain.detach(), "bias": self.bias.detach()}, folder / HEAD_FILE)
        (folder / "reward_model.json").write_text(json.dumps(meta or {}, indent=2))


def build_reward_model(cfg: ModelConfig, seed: int = 0) -> RewardModel:
    return RewardModel(SplitLM(load_causal_lm(cfg), cfg.trainable_layers), seed=seed)


def load_reward_model(folder: str | Path, trainable_layers="all") -> RewardModel:
    """Load a saved reward model: backbone via from_pretrained, then head, gain and bias."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model = RewardModel(SplitLM(lm, trainable_layers))
    extra = torch.load(folder / HEAD_FILE, weights_only=True)
    with torch.no_grad():
        model.head.weight.copy_(extra["head.weight"])
        model.head.bias.copy_(extra["head.bias"])
        model.gain.copy_(extra["gain"])
        model.bias.copy_(extra["bias"])
    return model
