"""When the distillation total ramps up, when gradients are measured, and when the loss weights are rebalanced."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KDSchedule:
    """Step-indexed schedule of the distillation extras (steps count training batches from the start of the run).

    Attributes:
        warmup (int): Steps over which the distillation total ramps linearly from 0 to 1 (0: no ramp).
        balance_steps (int): With gradient balancing, the steps measured before the weights are set (0: off).
        diagnose (int): Measure every this many steps for the diagnostics log (0: off).
    """

    warmup: int = 0
    balance_steps: int = 0
    diagnose: int = 0

    @classmethod
    def from_args(cls, args: dict, batches_per_epoch: int) -> KDSchedule:
        """Build from validated DS2D2 arguments (`kd_warmup` is in epochs) for a loader of `batches_per_epoch`."""
        return cls(
            warmup=round(args["kd_warmup"] * batches_per_epoch),
            balance_steps=args["balance_steps"] if args["balance"] == "grad" else 0,
            diagnose=args["diagnose"],
        )

    @property
    def balance_step(self) -> int | None:
        """The step at whose start the weights are rebalanced: the end of the warm-up, or after the measured steps."""
        return max(self.warmup, self.balance_steps) if self.balance_steps else None

    def scale(self, step: int) -> float:
        """Factor on the distillation total at `step` (1 after the warm-up)."""
        return 1.0 if step >= self.warmup else (step + 1) / (self.warmup + 1)

    def measures_for_balance(self, step: int) -> bool:
        """Whether `step` is one of the last `balance_steps` steps before the rebalancing."""
        b = self.balance_step
        return b is not None and b - self.balance_steps <= step < b

    def measures(self, step: int) -> bool:
        """Whether gradients are measured at `step`, for the diagnostics log or for balancing."""
        return (self.diagnose > 0 and step % self.diagnose == 0) or self.measures_for_balance(step)
