"""RLB-MI: reinforcement-learning black-box model inversion (Han et al., CVPR 2023).

Paper: "Reinforcement Learning-Based Black-Box Model Inversion Attacks", arXiv:2304.04625.

The attacker sees only the target's confidence vector (:class:`~midre.attacks.blackbox.ProbabilityOracle`).
An agent searches the latent space of a GAN prior trained on public images (Sec. 3.2, the same
GMI generator the white-box attacks use) as a Markov decision process (Sec. 3.3):

* state ``s_t``: the current latent ``z_t``; action ``a_t``: a latent proposed by the policy;
* transition: ``z_{t+1} = alpha * z_t + (1 - alpha) * a_t`` (``alpha`` is the diversity factor);
* reward (Eq. 4-7): ``R = w1 * log T_y(G(z_{t+1})) + w2 * log T_y(G(a_t))
  + w3 * log max(eps, T_y(G(z_{t+1})) - max_{i != y} T_i(G(z_{t+1})))`` with ``(w1, w2, w3) = (2, 2, 8)``;
* the agent is a Soft Actor-Critic (Haarnoja et al. 2018): a tanh-Gaussian actor, twin Q critics
  with Polyak-averaged targets, automatic entropy tuning; 256 hidden units as in the authors' runs.

Each episode starts from ``z_0 ~ N(0, I)``; the paper's runs use ``max_step = 1`` and ``alpha = 0``
(then the state image *is* the action image and one query per step suffices: we do not query it
twice). After every episode one test rollout with the deterministic policy from a fresh random state
is queried, and the reconstructions are the images with the highest target confidence seen.

One agent per identity, as in the paper; the agents of all identities are trained *in one batch*:
every network is a stack of per-identity weight matrices applied with ``baddbmm``, so K agents cost
one set of matrix multiplies and their updates stay independent (summed losses, element-wise Adam).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.attacks.base import AttackBudget, AttackResult, StepReporter, expand_labels
from midre.attacks.blackbox import ProbabilityOracle, QueryBudgetExceeded, checkpoint_queries, run_query_attack
from midre.attacks.registry import AttackRequest, register_attack
from midre.progress import ProgressCallback, StopCallback


@dataclass(frozen=True)
class RLBMIOptions:
    """RLB-MI settings (paper / authors' defaults in brackets).

    Attributes:
        alpha: diversity factor of the state transition [0].
        max_step: steps per episode [1].
        reward_weights: ``(w1, w2, w3)`` of the reward terms [(2, 2, 8)].
        epsilon: floor of the margin inside the log [1e-7].
        hidden: hidden units of the actor and critics [256].
        lr: Adam step size of actor, critics and temperature (``AttackBudget.lr`` overrides) [5e-4].
        gamma, tau: SAC discount and Polyak rate.
        batch_size: replay minibatch per agent.
        updates_per_step: SAC updates after every environment step.
        replay_capacity: transitions kept per agent (oldest overwritten).
        action_scale: actions are ``action_scale * tanh(u)`` (GMI-style latents in ``[-1, 1]``).
        test_rollouts: deterministic-policy rollouts queried after every episode [1].
        keep_training_images: also consider the images queried while training as reconstructions
            (they are paid for already); False keeps only the test rollouts as in the authors' code.
        checkpoints: fractions of the budget at which the current best images are snapshotted.
        prior: extra :class:`~midre.priors.PriorConfig` fields for a GMI prior trained on demand.
    """

    alpha: float = 0.0
    max_step: int = 1
    reward_weights: tuple[float, float, float] = (2.0, 2.0, 8.0)
    epsilon: float = 1e-7
    hidden: int = 256
    lr: float = 5e-4
    gamma: float = 0.99
    tau: float = 0.01
    batch_size: int = 64
    updates_per_step: int = 1
    replay_capacity: int = 10_000
    action_scale: float = 1.0
    test_rollouts: int = 1
    keep_training_images: bool = True
    checkpoints: tuple[float, ...] = (0.25, 0.5, 1.0)
    prior: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reward_weights", tuple(float(w) for w in self.reward_weights))
        object.__setattr__(self, "checkpoints", tuple(float(c) for c in self.checkpoints))
        if len(self.reward_weights) != 3:
            raise ValueError(f"RLBMIOptions.reward_weights needs 3 numbers, got {self.reward_weights!r}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"RLBMIOptions.alpha must be in [0, 1), got {self.alpha!r}")
        for name in ("max_step", "hidden", "batch_size", "updates_per_step", "replay_capacity"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RLBMIOptions.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.test_rollouts, int) or self.test_rollouts < 0:
            raise ValueError(f"RLBMIOptions.test_rollouts must be >= 0, got {self.test_rollouts!r}")


def rlb_reward(p_state: Tensor, p_action: Tensor, labels: Tensor, weights: tuple[float, float, float],
               epsilon: float = 1e-7) -> Tensor:
    """RLB-MI's reward (Han et al. 2023, Eq. 4-7) from two softmax vectors ``[N, K]`` and labels ``[N]``."""
    tiny = torch.finfo(p_state.dtype).tiny
    py_state = p_state.gather(1, labels[:, None]).squeeze(1)
    py_action = p_action.gather(1, labels[:, None]).squeeze(1)
    others = p_state.scatter(1, labels[:, None], float("-inf")).max(1).values
    r1 = py_state.clamp_min(tiny).log()
    r2 = py_action.clamp_min(tiny).log()
    r3 = (py_state - others).clamp_min(epsilon).log()
    return weights[0] * r1 + weights[1] * r2 + weights[2] * r3


class _StackedLinear(nn.Module):
    """``K`` independent linear layers applied at once: ``x [K, B, i] -> [K, B, o]``."""

    def __init__(self, k: int, fan_in: int, fan_out: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter((torch.rand(k, fan_in, fan_out, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(k, 1, fan_out, generator=generator) * 2 - 1) * bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class _StackedMLP(nn.Module):
    def __init__(self, k: int, sizes: list[int], generator: torch.Generator) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_StackedLinear(k, a, b, generator) for a, b in zip(sizes[:-1], sizes[1:],
                                                                                        strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class StackedSAC(nn.Module):
    """``K`` Soft Actor-Critic agents (one per identity) with stacked weights, trained together.

    Observations and actions have shape ``[K, B, d]``; rewards ``[K, B]``.
    """

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, k: int, dim: int, hidden: int, lr: float, gamma: float, tau: float,
                 action_scale: float, generator: torch.Generator) -> None:
        super().__init__()
        self.k, self.dim, self.gamma, self.tau, self.scale = k, dim, gamma, tau, action_scale
        self.actor = _StackedMLP(k, [dim, hidden, hidden, 2 * dim], generator)
        self.q1 = _StackedMLP(k, [2 * dim, hidden, hidden, 1], generator)
        self.q2 = _StackedMLP(k, [2 * dim, hidden, hidden, 1], generator)
        self.q1_target = _StackedMLP(k, [2 * dim, hidden, hidden, 1], generator)
        self.q2_target = _StackedMLP(k, [2 * dim, hidden, hidden, 1], generator)
        self.q1_target.load_state_dict(self.q1.state_dict())
        self.q2_target.load_state_dict(self.q2.state_dict())
        for p in (*self.q1_target.parameters(), *self.q2_target.parameters()):
            p.requires_grad_(False)
        self.log_temp = nn.Parameter(torch.zeros(k))
        self.target_entropy = -float(dim)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.opt_critic = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.opt_temp = torch.optim.Adam([self.log_temp], lr=lr)

    def policy(self, s: Tensor, generator: torch.Generator | None = None,
               deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Action ``[K, B, d]`` in ``[-scale, scale]`` and its log-probability ``[K, B]``."""
        mean, log_std = self.actor(s).chunk(2, dim=-1)
        if deterministic:
            return self.scale * torch.tanh(mean), torch.zeros(s.shape[:2], device=s.device)
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        u = mean + std * eps
        a = torch.tanh(u)
        # Gaussian log-density of u minus the tanh change of variables (SAC, Appendix C)
        logp = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - torch.log1p(-a.pow(2) + 1e-6).sum(-1)
        return self.scale * a, logp

    def _q(self, net: nn.Module, s: Tensor, a: Tensor) -> Tensor:
        return net(torch.cat([s, a / self.scale], -1)).squeeze(-1)

    def update(self, s: Tensor, a: Tensor, r: Tensor, s2: Tensor, done: Tensor,
               generator: torch.Generator) -> dict[str, float]:
        """One SAC step for every agent on its own minibatch ``[K, B, ...]``."""
        temp = self.log_temp.exp().detach()[:, None]
        with torch.no_grad():
            a2, logp2 = self.policy(s2, generator)
            q_next = torch.minimum(self._q(self.q1_target, s2, a2), self._q(self.q2_target, s2, a2))
            y = r + self.gamma * (1 - done) * (q_next - temp * logp2)
        critic_loss = ((self._q(self.q1, s, a) - y).pow(2) + (self._q(self.q2, s, a) - y).pow(2)).mean(1).sum()
        self.opt_critic.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.opt_critic.step()
        a_new, logp = self.policy(s, generator)
        q_new = torch.minimum(self._q(self.q1, s, a_new), self._q(self.q2, s, a_new))
        actor_loss = (temp * logp - q_new).mean(1).sum()
        self.opt_actor.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.opt_actor.step()
        temp_loss = -(self.log_temp[:, None] * (logp.detach() + self.target_entropy)).mean(1).sum()
        self.opt_temp.zero_grad(set_to_none=True)
        temp_loss.backward()
        self.opt_temp.step()
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, pt in zip(net.parameters(), tgt.parameters(), strict=True):
                    pt.lerp_(p, self.tau)
        return {"critic_loss": float(critic_loss.detach()) / self.k, "actor_loss": float(actor_loss.detach()) / self.k}


class _Replay:
    """Per-agent replay buffer ``[K, capacity, ...]``, filled in lock-step by all agents."""

    def __init__(self, k: int, capacity: int, dim: int, device: torch.device) -> None:
        self.s = torch.zeros(k, capacity, dim, device=device)
        self.a = torch.zeros_like(self.s)
        self.s2 = torch.zeros_like(self.s)
        self.r = torch.zeros(k, capacity, device=device)
        self.done = torch.zeros(k, capacity, device=device)
        self.size = 0
        self.capacity = capacity

    def add(self, s: Tensor, a: Tensor, r: Tensor, s2: Tensor, done: float) -> None:
        i = self.size % self.capacity
        self.s[:, i], self.a[:, i], self.r[:, i], self.s2[:, i] = s, a, r, s2
        self.done[:, i] = done
        self.size += 1

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        n = min(self.size, self.capacity)
        idx = torch.randint(0, n, (self.s.shape[0], batch), generator=generator).to(self.s.device)
        take = lambda t: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1])) if t.dim() == 3 else t.gather(1, idx)  # noqa: E731
        return take(self.s), take(self.a), take(self.r), take(self.s2), take(self.done)


class _TopK:
    """The ``m`` most confident latents seen per identity."""

    def __init__(self, k: int, m: int, dim: int, device: torch.device) -> None:
        self.score = torch.full((k, m), -1.0, device=device)
        self.z = torch.zeros(k, m, dim, device=device)

    def offer(self, z: Tensor, score: Tensor) -> None:
        """``z [K, n, d]`` with target confidences ``score [K, n]``."""
        all_s = torch.cat([self.score, score], 1)
        all_z = torch.cat([self.z, z], 1)
        top = all_s.topk(self.score.shape[1], dim=1).indices
        self.score = all_s.gather(1, top)
        self.z = all_z.gather(1, top[..., None].expand(-1, -1, all_z.shape[-1]))


class RLBMI:
    """The RLB-MI attack. Holds the probability oracle and the attacker's own generator only."""

    def __init__(self, oracle: ProbabilityOracle, generator: nn.Module, options: RLBMIOptions | None = None,
                 *, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if not isinstance(oracle, ProbabilityOracle):
            raise TypeError("RLB-MI is a black-box attack: it takes a ProbabilityOracle")
        self.oracle = oracle
        self.generator = generator
        self.options = options or RLBMIOptions()
        self.seed = seed
        self.device = torch.device(device)

    def _generate(self, z: Tensor) -> Tensor:
        with torch.no_grad():
            return self.generator(z)

    def run(self, identities: Tensor, per_identity: int, budget: AttackBudget, *,
            progress: ProgressCallback | None = None, should_stop: StopCallback | None = None) -> dict[str, Any]:
        """Train one agent per identity until the query budget (or ``budget.steps`` episodes) is spent.

        Returns a dict with ``pixels`` ``[K * per_identity, C, H, W]`` in ``[0, 1]`` (identity-major),
        ``labels``, ``checkpoints`` (``(queries, pixels)``) and ``extra``.
        """
        opt = self.options
        ids = torch.as_tensor(identities, dtype=torch.long).flatten()
        k, dev = ids.numel(), self.device
        dim = int(self.generator.latent_dim)
        y = ids.to(dev)
        episodes, cost = self._episodes(k, budget)
        marks = checkpoint_queries(episodes * cost, opt.checkpoints)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        lr = budget.lr if budget.lr is not None else opt.lr
        agent = StackedSAC(k, dim, opt.hidden, lr, opt.gamma, opt.tau, opt.action_scale, gen).to(dev)
        replay = _Replay(k, min(episodes * opt.max_step, opt.replay_capacity), dim, dev)
        best = _TopK(k, per_identity, dim, dev)
        reporter = StepReporter("rlb-mi", episodes, progress, should_stop)
        snapshots: list[tuple[int, Tensor]] = []
        rewards = torch.zeros(episodes)
        losses: dict[str, float] = {}
        for ep in range(episodes):
            try:
                ep_reward, losses = self._episode(agent, replay, best, y, gen, losses)
                if opt.test_rollouts:
                    self._test_rollouts(agent, best, y, gen)
            except QueryBudgetExceeded:  # a deployment's budget ran out mid-episode: keep the best so far
                rewards = rewards[:ep]
                break
            rewards[ep] = float(ep_reward.mean())
            while marks and self.oracle.queries >= marks[0]:
                marks.pop(0)
                snapshots.append(self._snapshot(best))
            reporter.step(-float(ep_reward.mean()), message=f"rlb-mi episode {ep + 1}/{episodes}")
        if not snapshots or snapshots[-1][0] != self.oracle.queries:
            snapshots.append(self._snapshot(best))
        done = int(rewards.numel())
        tail = max(1, done // 10)
        extra = {"episodes": done, "queries_per_episode": cost,
                 "reward_first": float(rewards[:tail].mean()) if done else None,
                 "reward_last": float(rewards[-tail:].mean()) if done else None,
                 "best_confidence": float(best.score.mean()), **losses}
        return {"pixels": snapshots[-1][1], "labels": expand_labels(ids, per_identity),
                "checkpoints": snapshots, "extra": extra}

    def _episodes(self, k: int, budget: AttackBudget) -> tuple[int, int]:
        """How many episodes the budget pays for, and what one costs in queries (for ``k`` identities):
        one (``alpha == 0``) or two oracle calls per step, plus the test rollouts."""
        opt = self.options
        per_step = 1 if opt.alpha == 0 else 2
        cost = k * (opt.max_step * per_step + opt.test_rollouts)
        if budget.queries is None:
            return max(1, budget.steps), cost
        episodes = budget.queries // cost
        if episodes < 1:
            raise ValueError(f"rlb-mi: a query budget of {budget.queries} does not pay for one episode "
                             f"({cost} queries for {k} identities)")
        return max(1, episodes), cost

    def _episode(self, agent: StackedSAC, replay: _Replay, best: _TopK, y: Tensor, gen: torch.Generator,
                 losses: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
        """One episode of every identity's agent: ``max_step`` moves in latent space, each rewarded by
        the oracle's probabilities and stored for the agents' updates; the summed reward per identity
        and the latest update's losses (``losses`` when no update ran)."""
        opt = self.options
        k, dim, dev = y.numel(), int(self.generator.latent_dim), self.device
        z = torch.randn(k, dim, generator=gen).to(dev)
        ep_reward = torch.zeros(k, device=dev)
        for t in range(opt.max_step):
            with torch.no_grad():
                if replay.size < opt.batch_size:  # warm-up: uniform random actions fill the buffer
                    a = (torch.rand(k, dim, generator=gen).to(dev) * 2 - 1) * opt.action_scale
                else:
                    a = agent.policy(z[:, None], gen)[0][:, 0]
            z_next = opt.alpha * z + (1 - opt.alpha) * a
            if opt.alpha == 0:
                p_state = self.oracle.predict_proba(self._generate(z_next)).to(dev)
                p_action = p_state
            else:
                p = self.oracle.predict_proba(self._generate(torch.cat([z_next, a]))).to(dev)
                p_state, p_action = p[:k], p[k:]
            r = rlb_reward(p_state, p_action, y, opt.reward_weights, opt.epsilon)
            ep_reward += r
            replay.add(z, a, r, z_next, float(t == opt.max_step - 1))
            if opt.keep_training_images:
                best.offer(z_next[:, None], p_state.gather(1, y[:, None]))
            if replay.size >= opt.batch_size:
                for _ in range(opt.updates_per_step):
                    losses = agent.update(*replay.sample(opt.batch_size, gen), gen)
            z = z_next
        return ep_reward, losses

    def _test_rollouts(self, agent: StackedSAC, best: _TopK, y: Tensor, gen: torch.Generator) -> None:
        """Deterministic rollouts of the current policies from fresh starts; their end points compete
        for the kept latents by the oracle's confidence in the attacked identity."""
        opt = self.options
        k, dim, n = y.numel(), int(self.generator.latent_dim), opt.test_rollouts
        with torch.no_grad():
            zt = torch.randn(k, n, dim, generator=gen).to(self.device)
            for _ in range(opt.max_step):
                zt = opt.alpha * zt + (1 - opt.alpha) * agent.policy(zt, deterministic=True)[0]
            p = self.oracle.predict_proba(self._generate(zt.reshape(-1, dim))).to(self.device)
            best.offer(zt, p.view(k, n, -1).gather(2, y[:, None, None].expand(-1, n, 1)).squeeze(2))

    def _snapshot(self, best: _TopK) -> tuple[int, Tensor]:
        """``(queries so far, images of the kept latents)``: one point of the query-budget curve."""
        return self.oracle.queries, self._generate(best.z.reshape(-1, int(self.generator.latent_dim))).cpu()


@register_attack("rlb-mi", options=RLBMIOptions, needs="gmi", access="probabilities", paper="Han et al., CVPR 2023",
                 aliases=("rlbmi",), version=1)
def run_rlb_mi(request: AttackRequest) -> AttackResult:
    """RLB-MI through a :class:`~midre.attacks.blackbox.ProbabilityOracle` in a GMI prior's latent space."""
    return run_query_attack(request, ProbabilityOracle, RLBMI)


__all__ = ["RLBMI", "RLBMIOptions", "StackedSAC", "rlb_reward", "run_rlb_mi"]
