"""Privacy spent under differential privacy, accounted with Flower's RDP accountant (``flwr[dp]``).

With ``dp-noise-multiplier > 0`` the server clips every update to ``dp-clipping-norm`` and adds Gaussian
noise of ``noise-multiplier x clipping-norm / n`` to the average of the n replies (Flower's server-side
fixed-clipping wrapper). Each round that aggregates is one Gaussian release; every admitted site takes part
in every round, so no sampling amplification is claimed (add-or-remove-one neighbouring sites).

The release protects each site by what its update weighs in the average: a site of weight w_i among weights
summing to W moves the average by up to C w_i / W, so its noise multiplier is sigma W / (n w_i) (issue 29,
F7: with weights by case count the largest site's epsilon was more than twice the reported one). The round
engine averages with equal weights under DP, where this is sigma for every site; the ledger accounts each
round at the *worst* site's multiplier of the weights it is given, so the epsilon it reports (at
``dp-delta``, after each round) holds for every site, and ``dp-max-epsilon`` stops the run before a round
that would take the worst site past it.

Not covered: the train loss, Dice/HD95, gate and denoising metrics a site reports, and the accept/reject
decision (made on the unclipped update) are released without noise.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

POPULATION = 1_000_000  # without sampling amplification the population size does not enter the bound


def worst_site_multiplier(noise_multiplier: float, weights: Sequence[float]) -> float:
    """The noise multiplier of the site that weighs most in a weighted average of clipped updates with noise
    ``noise_multiplier x C / n``: ``noise_multiplier x sum(w) / (n x max(w))`` (``noise_multiplier`` itself for
    equal weights)."""
    if not weights or min(weights) <= 0:
        raise ValueError(f"privacy: weights must be positive, got {list(weights)[:5]}")
    return noise_multiplier * sum(weights) / (len(weights) * max(weights))


class PrivacyLedger:
    def __init__(
        self, noise_multiplier: float, delta: float, max_epsilon: float = 0.0, state: dict | None = None
    ) -> None:
        self.noise_multiplier, self.max_epsilon = noise_multiplier, max_epsilon
        config = PrivacyConfig(
            target_delta=delta,
            population_size=POPULATION,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=max_epsilon or None,
        )
        self.accountant = RdpAccountant(config)
        self.worst_multiplier = noise_multiplier
        if state:
            self.accountant.load_state_dict(state)
            for c in state.get("compositions", []):  # a resumed run: the worst multiplier spent so far
                self.worst_multiplier = min(self.worst_multiplier, float(c["event"]["noise_multiplier"]))

    def _event(self, replies: int | Sequence[float]) -> GaussianPrivacyEvent:
        weights = [1.0] * max(1, replies) if isinstance(replies, int) else [float(w) for w in replies]
        return GaussianPrivacyEvent(worst_site_multiplier(self.noise_multiplier, weights), len(weights), POPULATION)

    def would_exceed(self, replies: int | Sequence[float]) -> bool:
        """Whether a round averaging ``replies`` (a count: equal weights; or the weights) would take the worst
        site past ``max_epsilon``."""
        return self.max_epsilon > 0 and self.accountant.would_exceed(self._event(replies))

    def spend(self, replies: int | Sequence[float]) -> dict:
        """Account one release that averaged ``replies`` (a count: equal weights; or the weights used)."""
        event = self._event(replies)
        self.accountant.compose(event)
        self.worst_multiplier = min(self.worst_multiplier, event.noise_multiplier)
        return self.spent()

    def spent(self) -> dict:
        if not self.accountant.num_releases:
            return {"epsilon": 0.0, "delta": self.accountant.config.target_delta, "releases": 0}
        s = self.accountant.get_privacy_spent()
        return {
            "epsilon": round(s.epsilon, 4),
            "delta": s.delta,
            "releases": s.num_releases,
            "method": s.accounting_method,
            "noise-multiplier": self.noise_multiplier,
            "worst-site-noise-multiplier": round(self.worst_multiplier, 6),
        }

    def state_dict(self) -> dict:
        return self.accountant.state_dict()
