"""Per-request token constraints: which tokens a request may sample next (structured output).

    class TokenConstraint(Protocol):
        def mask(self, vocab_size: int) -> torch.Tensor | None   # bool [V]: allowed next; None: anything
        def advance(self, token: int) -> None                     # the token that was sampled

The engine calls `mask` on a request's logits row before its sampler (so penalties, warpers and
logprobs all see the constrained distribution) and `advance` with the token sampled. A constraint
whose grammar is complete allows only its stop ids, so the request ends with finish_reason "stop".
Must not: know any grammar library (engine/grammar.py wraps one), the model or tokenizers.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TokenConstraint(Protocol):
    def mask(self, vocab_size: int) -> torch.Tensor | None:
        """bool [V] of the tokens allowed next (V = the model's logits width); None = no restriction."""
        ...

    def advance(self, token: int) -> None:
        """Take the token that was sampled (called once per generated token, in order)."""
        ...


class ConstraintError(RuntimeError):
    """A request's constraint failed (raised, returned a bad mask, or allows no token): that request
    ends with finish_reason "error"; its neighbours go on."""


def _name(constraint: TokenConstraint) -> str:
    return type(constraint).__name__


def constrain(logits: torch.Tensor, constraint: TokenConstraint) -> torch.Tensor:
    """logits [1, V] -> logits [1, V] with the disallowed tokens at -inf. ConstraintError naming the
    constraint when its mask raises, is not a bool [V] tensor, or allows nothing."""
    vocab = logits.shape[-1]
    try:
        allowed = constraint.mask(vocab)
    except Exception as exc:
        raise ConstraintError(f"token constraint {_name(constraint)}.mask failed: {type(exc).__name__}: {exc}"
                              ) from exc
    if allowed is None:
        return logits
    if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool or tuple(allowed.shape) != (vocab,):
        got = f"{allowed.dtype} {tuple(allowed.shape)}" if isinstance(allowed, torch.Tensor) else type(allowed)
        raise ConstraintError(f"token constraint {_name(constraint)}.mask must return a bool tensor of shape "
                              f"({vocab},) or None, got {got}")
    allowed = allowed.to(logits.device)
    if not bool(allowed.any()):
        raise ConstraintError(f"token constraint {_name(constraint)} allows no token")
    return logits.masked_fill(~allowed, float("-inf"))


def advance(constraint: TokenConstraint, token: int) -> None:
    """constraint.advance(token), its failure as a ConstraintError naming it."""
    try:
        constraint.advance(token)
    except Exception as exc:
        raise ConstraintError(f"token constraint {_name(constraint)}.advance({token}) failed: "
                              f"{type(exc).__name__}: {exc}") from exc
