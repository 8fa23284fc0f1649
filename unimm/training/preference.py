"""Pairwise losses: the preference stage's DPO (Rafailov et al., 2023) on chosen / rejected
answers, and generation's prompt contrast (an image under its caption against a swapped one).

DPO: with each answer's log-probability under the model being trained (the policy) and
under a frozen reference (the model the stage started from), the implicit reward of an
answer is beta * (log p_policy - log p_reference); the loss is -log sigmoid(reward of
the chosen answer - reward of the rejected one), which raises the chosen answer against
the rejected one while the reference keeps the model near where it started.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """policy_logps, reference_logps: (2P,) answer log-probabilities, the P chosen answers first.

    Returns {"dpo_loss", "reward_accuracy" (share of pairs whose chosen answer has the higher
    reward), "reward_margin" (mean chosen - rejected reward)}; only the loss carries gradient.
    """
    if policy_logps.shape != reference_logps.shape or policy_logps.ndim != 1 or policy_logps.shape[0] % 2:
        raise ValueError(f"expected two (2P,) vectors of answer log-probabilities, got {tuple(policy_logps.shape)} "
                         f"and {tuple(reference_logps.shape)}")
    rewards = beta * (policy_logps - reference_logps.detach())
    chosen, rejected = rewards.chunk(2)
    margin = chosen - rejected
    return {"dpo_loss": -F.logsigmoid(margin).mean(),
            "reward_accuracy": (margin > 0).float().mean().detach(),
            "reward_margin": margin.mean().detach()}


def contrast_loss(caption_nll: torch.Tensor, swapped_nll: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """The trainer's prompt_contrast: (S,) summed NLLs of S images under their captions and under
    their swapped captions -> {"contrast_loss": mean softplus(beta * (caption - swapped)),
    "contrast_accuracy": share of images likelier under their own caption (no gradient)}."""
    margin = swapped_nll - caption_nll
    return {"contrast_loss": F.softplus(-beta * margin).mean(),
            "contrast_accuracy": (margin > 0).float().mean().detach()}
