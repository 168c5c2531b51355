"""Adversarial training on the word-embedding output: FGM, PGD and FreeLB, one micro-batch at a time.

A perturbation delta (B, T, d) is added to the output of `model.get_input_embeddings()` by a forward
hook (the word embeddings, before position embeddings and LayerNorm in BERT; the token embeddings of a
decoder), so the same code serves encoder classifiers (task=cls) and causal LMs (task=gen). Pad
positions are never perturbed (delta is multiplied by the attention mask). The bound is per example:
the L2 norm of delta over all of an example's token embeddings, ||delta_i||_2 <= epsilon (as FreeLB).

Every method starts from delta_0 = 0 (the clean pass) and steps along the per-example normalised
gradient, g / ||g||_2, projecting back onto the epsilon-ball after each step:

    delta_{t+1} = Proj_eps(delta_t + step_size * g_t / ||g_t||)

The objective of a micro-batch is   (1 - weight) * L(x) + weight * L_adv,   where L_adv is
    fgm     L(x + delta_1), one step of length epsilon (Miyato et al. 2017, "Adversarial training methods
            for semi-supervised text classification");
    pgd     L(x + delta_K) after K projected steps; the K - 1 intermediate passes compute the gradient of
            delta only, no parameter gradients (Madry et al. 2018, "Towards deep learning models resistant
            to adversarial attacks"; their L-inf sign step is the L2 normalised step here);
    freelb  mean_t L(x + delta_t), t = 1..K: every ascent pass also accumulates the parameter gradients
            (Zhu et al. 2020, "FreeLB: enhanced adversarial training for natural language understanding").
Differences from the papers: the start is delta_0 = 0, not a random point in the ball (PGD, FreeLB), and the
clean loss is kept with share 1 - weight (Madry and FreeLB train on the adversarial loss alone). With
epsilon = 0 every delta is exactly 0, so L_adv = L(x) and the gradient is 0.5 g + 0.5 g: exactly the plain
step's g at weight 0.5 (powers of two scale exactly) as long as both forwards compute the same (no dropout).

Cost per micro-batch: fgm 2 forward + 2 backward passes; pgd and freelb (K + 1) forward + (K + 1) backward.
No state outlives a micro-batch (delta starts at 0 each time): nothing to checkpoint; the extra forwards
draw dropout masks from torch's RNG, whose state the checkpoints already hold, so a resume stays exact.

The trainer calls `Attack.train` inside its micro-batch loop: `forward(final)` runs the task's forward under
the trainer's autocast and DDP `no_sync` (gradients synchronise only in the last pass of the last micro-batch,
`final=True`) and returns the loss scaled for accumulation; `loss_scale` is the GradScaler's `scale` (fp16)
or the identity. A persistent embedding-gradient buffer (`embedding_grad`, a CPU fast path) is unaffected:
the hook adds delta after its lookup, and the delta-only gradients of PGD never reach the lookup's backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

METHODS = ("fgm", "pgd", "freelb")


@dataclass(frozen=True)
class AdversarialSettings:
    """`regularization.adversarial`, with the defaults resolved (step_size null -> epsilon / steps)."""

    method: str
    epsilon: float
    steps: int
    step_size: float
    weight: float

    @classmethod
    def from_config(cls, cfg) -> AdversarialSettings:
        method = str(cfg.method)
        steps = 1 if method == "fgm" else int(cfg.steps)
        if method == "fgm":
            step_size = float(cfg.epsilon)  # FGM: one step to the ball's surface
        else:
            step_size = float(cfg.step_size) if cfg.step_size is not None else float(cfg.epsilon) / steps
        return cls(method, float(cfg.epsilon), steps, step_size, float(cfg.weight))

    @property
    def passes(self) -> int:
        """Forward (and backward) passes per micro-batch: the clean one and one per ascent step."""
        return self.steps + 1

    def describe(self) -> str:
        """For the banner and finetune.log: "fgm eps 1.0, weight 0.5: 2 forward + 2 backward per micro-batch"."""
        steps = "" if self.method == "fgm" else f", K {self.steps}, step {self.step_size:.3g}"
        return (
            f"{self.method} eps {self.epsilon:g}{steps}, weight {self.weight:g}: "
            f"{self.passes} forward + {self.passes} backward per micro-batch"
        )

    def attack(self, embedding: torch.nn.Module, attention_mask: torch.Tensor) -> Attack:
        return Attack(self, embedding, attention_mask)


class Attack:
    """delta on one micro-batch's embedding output, added by a forward hook while the attack is open.

    Use as a context manager around the clean forward: `with settings.attack(emb, mask) as attack:`.
    """

    def __init__(self, settings: AdversarialSettings, embedding: torch.nn.Module, attention_mask: torch.Tensor):
        self.settings = settings
        self.embedding = embedding
        self.mask = attention_mask.detach()[..., None].float()  # (B, T, 1): 0 on pad positions
        self.delta: torch.Tensor | None = None  # (B, T, d), float32, a leaf that requires grad
        self.norms: list[torch.Tensor] = []  # ||delta_i|| per example of each forward (what the bound applies to)
        self._handle = None

    def __enter__(self) -> Attack:
        self._handle = self.embedding.register_forward_hook(self._add_delta)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _add_delta(self, module, inputs, output):
        if self.delta is None:  # the clean pass: delta_0 = 0
            self.delta = torch.zeros(output.shape, dtype=torch.float32, device=output.device, requires_grad=True)
        if self.delta.shape != output.shape:
            raise RuntimeError(
                f"adversarial: the input embedding's output is {tuple(output.shape)}, the perturbation "
                f"{tuple(self.delta.shape)}; the embedding is called more than once per forward"
            )
        delta = self.delta * self.mask
        self.norms.append(delta.detach().flatten(1).norm(dim=1))
        return output + delta.to(output.dtype)

    def step(self, grad: torch.Tensor | None) -> None:
        """delta <- Proj_eps(delta + step_size * grad / ||grad||), per example; a new leaf."""
        s = self.settings
        delta = self.delta.detach()
        if grad is not None:
            grad = grad.detach().float() * self.mask
            norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1)
            usable = torch.isfinite(norm) & (norm > 0)  # a zero or overflowed (fp16) gradient: no step
            direction = torch.where(usable, grad / torch.where(usable, norm, torch.ones_like(norm)), 0.0)
            delta = delta + s.step_size * direction
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
        over = norm > s.epsilon
        delta = torch.where(over, delta * (s.epsilon / torch.where(over, norm, torch.ones_like(norm))), delta)
        self.delta = delta.requires_grad_()

    def train(
        self,
        clean_loss: torch.Tensor,
        forward: Callable[[bool], torch.Tensor],
        loss_scale: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Backpropagate the clean loss (share 1 - weight), run the ascent passes, backpropagate the adversarial
        loss (share weight); return the adversarial loss L_adv (detached, scaled as `forward`'s losses are)."""
        s = self.settings
        (loss_scale(clean_loss * (1.0 - s.weight))).backward()
        adversarial = torch.zeros((), device=clean_loss.device)
        for t in range(1, s.steps + 1):
            self.step(self.delta.grad)
            final = t == s.steps
            loss = forward(final)
            if s.method == "freelb":  # every ascent pass trains, 1/K of the weight each
                share = s.weight / s.steps
                (loss_scale(loss * share)).backward()
                adversarial += loss.detach() / s.steps
            elif final:  # fgm, pgd: the last perturbation trains
                (loss_scale(loss * s.weight)).backward()
                adversarial += loss.detach()
            else:  # pgd's intermediate steps: the gradient of delta only
                (grad,) = torch.autograd.grad(loss_scale(loss), self.delta)
                self.delta.grad = grad
        return adversarial
