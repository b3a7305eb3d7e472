"""Token critic (Lezama et al. 2022; the paper's "critic loss"): scores which tokens of a sequence are fake.

The sampler re-masks the tokens the critic rates most likely wrong, instead of MaskGIT's own low-confidence
tokens. It is the MaskGIT backbone (same inputs, text conditioning, null condition, context caching and
classifier-free guidance) with a one-logit head: ``forward`` returns (b, n) logits of "this token is
wrong". Train it with :func:`generatect_kedro.losses.maskgit_loss.token_critic_loss`.

The release ships no trained critic (``TokenCritic``/``SelfCritic`` exist in its code but are never used),
so there is no checkpoint layout to match; a critic is usually smaller than the generator.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig

__all__ = ["TokenCritic", "critic_config"]


def critic_config(maskgit_config: MaskGITConfig, *, depth: int = 2, **overrides) -> MaskGITConfig:
    """A critic config matching ``maskgit_config``'s tokens and text, shallower by default."""
    return replace(maskgit_config, depth=depth, **overrides)


class TokenCritic(MaskGIT):
    """MaskGIT backbone with a (dim → 1) head; ``forward(...)`` → (b, n) "wrong token" logits."""

    def _make_head(self) -> nn.Module:
        return nn.Linear(self.config.dim, 1)

    def _head(self, x: Tensor) -> Tensor:
        return self.to_logits(x).squeeze(-1)
