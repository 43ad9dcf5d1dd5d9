"""A neural learner for the CoinRun-like world: stable-baselines3 PPO on CPU, one thread, seeded.

Why PPO from stable-baselines3: it is what Langosco et al. used (PPO), it is a well-kept library, and on CPU with one
thread the same seed gives the same weights bit for bit (tests/test_proxy_goal.py checks it). The policy is a small
MLP over the flattened one-hot observation; its hidden features (the actor's last hidden layer) are what `features`
returns, for linear probes (`seedbed.read.probes.train_probe`).

Evaluation plays many levels in lockstep, one batched forward pass a step, sampling each action from the policy with
a seeded numpy generator (a greedy policy can loop forever between two cells; Langosco et al. sampled too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from seedbed.worlds.coinrun import MAX_STEPS, CoinRunEnv, Level, observe


@dataclass(frozen=True)
class PPOSettings:
    """What one agent's training is: sizes and PPO's hyperparameters (chosen on pilot seeds ≥ 1000)."""

    timesteps: int = 30_000
    n_envs: int = 16
    n_steps: int = 64  # per env per update: n_envs × n_steps transitions an update
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 1e-3
    gamma: float = 0.95  # a short horizon: the way to the coin pays more the shorter it is
    ent_coef: float = 0.01
    hidden: tuple[int, ...] = (64, 64)
    cnn: int = 0  # channels of two 3×3 convolutions before the MLP (0: an MLP on the flattened observation)


@dataclass
class Played:
    """Episodes of one agent on given levels: the outcome of each ("coin", "end" or None), and one trajectory if asked."""

    outcomes: list[str | None]
    steps: list[int]
    features: np.ndarray  # [T, hidden] the actor's last hidden layer at every step played (all levels)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # per row of `features`: what the probes read
    frames: list[list[list[str]]] = field(default_factory=list)  # per level in `record`: text grids, start to end


def train(seed: int, random_coin: float, settings: PPOSettings = PPOSettings()):
    """A PPO agent trained on levels whose coin is placed at random in a share `random_coin` of them (one thread)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(1)
    SmallCNN = _small_cnn()
    envs = DummyVecEnv([lambda: CoinRunEnv(random_coin=random_coin) for _ in range(settings.n_envs)])
    envs.seed(seed)
    kwargs: dict = {"net_arch": list(settings.hidden)}
    if settings.cnn:
        kwargs |= {"features_extractor_class": SmallCNN, "features_extractor_kwargs": {"channels": settings.cnn}}
    model = PPO("MlpPolicy", envs, n_steps=settings.n_steps, batch_size=settings.batch_size, n_epochs=settings.n_epochs,
                learning_rate=settings.learning_rate, gamma=settings.gamma, ent_coef=settings.ent_coef, seed=seed,
                device="cpu", verbose=0, policy_kwargs=kwargs)
    model.learn(total_timesteps=settings.timesteps)
    return model


def _small_cnn():
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class SmallCNN(BaseFeaturesExtractor):
        """Two 3×3 convolutions (same padding) and a flatten: walls are local, and convolutions see them alike everywhere."""

        def __init__(self, observation_space, channels: int = 16) -> None:
            c, h, w = observation_space.shape
            super().__init__(observation_space, channels * h * w)
            self.net = torch.nn.Sequential(torch.nn.Conv2d(c, channels, 3, padding=1), torch.nn.ReLU(),
                                           torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU(),
                                           torch.nn.Flatten())

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs)

    return SmallCNN


def weights(model) -> dict[str, torch.Tensor]:
    """The policy's parameters (to compare two trainings bit for bit)."""
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


@torch.no_grad()
def features(model, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Action probabilities [N, 4] and the actor's last hidden features [N, hidden] for observations [N, 4, C, C]."""
    policy = model.policy
    x = torch.as_tensor(obs, dtype=torch.float32)
    latent = policy.mlp_extractor.forward_actor(policy.extract_features(x, policy.pi_features_extractor))
    probs = torch.softmax(policy.action_net(latent), dim=-1)
    return probs.double().numpy(), latent.double().numpy()


def play(model, levels: list[Level], seed: int, record: tuple[int, ...] = ()) -> Played:
    """Play each level once, all in lockstep, actions sampled from the policy by a generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    envs = [CoinRunEnv(random_coin=1.0) for _ in levels]
    obs = np.stack([e.reset(options={"level": lv})[0] for e, lv in zip(envs, levels)])
    active = list(range(len(levels)))
    outcomes: list[str | None] = [None] * len(levels)
    steps = [MAX_STEPS] * len(levels)
    feats, coin_up, end_up = [], [], []
    frames = {i: [envs[i].text()] for i in record}
    while active:
        probs, latent = features(model, obs[active])
        feats.append(latent)
        for i in active:  # what the probes read: is the coin (the end) in a row above the agent's?
            coin_up.append(levels[i].coin[0] < envs[i].agent[0])
            end_up.append(levels[i].end[0] < envs[i].agent[0])
        u = rng.random(len(active))
        actions = (probs.cumsum(axis=1) < u[:, None]).sum(axis=1).clip(max=3)
        still = []
        for i, a in zip(active, actions):
            o, _, terminated, truncated, info = envs[i].step(int(a))
            obs[i] = o
            if i in frames:
                frames[i].append(envs[i].text())
            if terminated or truncated:
                outcomes[i], steps[i] = info["outcome"], info["steps"]
            else:
                still.append(i)
        active = still
    return Played(outcomes, steps, np.concatenate(feats) if feats else np.zeros((0, 0)),
                  {"coin above": np.array(coin_up), "end above": np.array(end_up)}, [frames[i] for i in record])


def first_observation(level: Level) -> np.ndarray:
    return observe(level, level.start)
