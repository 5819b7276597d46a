"""Privacy spent under differential privacy, accounted with Flower's RDP accountant (``flwr[dp]``).

With ``dp-noise-multiplier > 0`` the server clips every update to ``dp-clipping-norm`` and adds Gaussian
noise to the average (Flower's server-side fixed-clipping wrapper). Each round that aggregates is one
Gaussian release with that noise multiplier; every admitted site takes part in every round, so no
sampling amplification is claimed (add-or-remove-one neighbouring sites). The ledger reports the
epsilon spent at ``dp-delta`` after each round, and with ``dp-max-epsilon`` the run stops before a
round that would spend more.
"""

from __future__ import annotations

from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

POPULATION = 1_000_000  # without sampling amplification the population size does not enter the bound


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
        if state:
            self.accountant.load_state_dict(state)

    def _event(self, replies: int) -> GaussianPrivacyEvent:
        return GaussianPrivacyEvent(self.noise_multiplier, max(1, replies), POPULATION)

    def would_exceed(self, replies: int) -> bool:
        return self.max_epsilon > 0 and self.accountant.would_exceed(self._event(replies))

    def spend(self, replies: int) -> dict:
        self.accountant.compose(self._event(replies))
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
        }

    def state_dict(self) -> dict:
        return self.accountant.state_dict()
