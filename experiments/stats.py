"""Sequential tests for experiments, safe to look at after every request: pure functions, no I/O.

The method is the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis and Walsh, "Always
Valid Inference: Continuous Monitoring of A/B Tests" (Operations Research, 2022), with a normal mixing
distribution N(0, τ²) over the difference of means θ = mean(treatment) − mean(control). With the observed
difference d, its plug-in variance s² = σ²_c/n_c + σ²_t/n_t (σ² = p(1−p) for a binary metric, the sample variance
otherwise) and H0: θ = θ0, the mixture likelihood ratio is

    Λ = sqrt(s² / (s² + τ²)) · exp( τ² (d − θ0)² / (2 s² (s² + τ²)) )

(for equal arms of n, s² = V/n and this is the paper's formula). Λ is a nonnegative martingale under H0, so by
Ville's inequality P(Λ ever ≥ 1/α) ≤ α: rejecting the first time Λ ≥ 1/α keeps the false-positive rate at α however
often one looks. 1/Λ (its running minimum) is an always-valid p-value, and the θ0 not rejected form a confidence
sequence, valid at every look at once. The variance is a plug-in estimate, so a burn-in (`min_samples` per arm)
keeps the first looks from dividing by an estimate of zero. τ is set to the smallest effect worth detecting.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    """One arm's observations of one metric: how many, their mean and variance (plug-in, the population form)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of_sums(cls, n: int, total: float, total_squares: float) -> "Summary":
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        return cls(n, mean, max(0.0, total_squares / n - mean * mean))

    @classmethod
    def of_binary(cls, n: int, successes: int) -> "Summary":
        if n <= 0:
            return cls(0, 0.0, 0.0)
        rate = successes / n
        return cls(n, rate, rate * (1.0 - rate))

    def interval(self, z: float = 1.959963984540054) -> tuple[float, float]:
        """A fixed-sample normal interval of the mean (95% by default): what an arm's own figure is, not a test."""
        half = z * math.sqrt(self.variance / self.n) if self.n else math.inf
        return self.mean - half, self.mean + half


@dataclass(frozen=True, slots=True)
class Comparison:
    """A treatment arm against the control on one metric, at this look."""

    difference: float  # treatment − control
    lower: float  # the (1 − α) confidence sequence on the difference, valid at every look
    upper: float
    p_value: float  # 1/Λ at this look, capped at 1 (the always-valid p-value is the running minimum of these)
    significant: bool  # Λ ≥ 1/α: the difference is not zero
    ready: bool  # both arms are past the burn-in


def msprt_log_ratio(difference: float, variance: float, tau_squared: float) -> float:
    """log Λ of the normal-mixture SPRT for H0: difference 0, with `variance` the difference's (plug-in) variance."""
    total = variance + tau_squared
    return 0.5 * math.log(variance / total) + tau_squared * difference * difference / (2.0 * variance * total)


def confidence_half_width(variance: float, tau_squared: float, alpha: float) -> float:
    """Half the width of the confidence sequence: the θ0 with Λ(θ0) < 1/α are d ± this."""
    total = variance + tau_squared
    return math.sqrt(2.0 * variance * total / tau_squared * (math.log(1.0 / alpha) + 0.5 * math.log(total / variance)))


def compare(control: Summary, treatment: Summary, *, alpha: float, tau: float, min_samples: int) -> Comparison:
    """The mSPRT of treatment against control. Not `ready` (never significant) before both arms have
    `min_samples`, or while the variance is still estimated as zero (every observation alike)."""
    difference = treatment.mean - control.mean
    ready = control.n >= min_samples and treatment.n >= min_samples
    variance = (control.variance / control.n + treatment.variance / treatment.n) if ready else 0.0
    if not ready or variance <= 0.0 or tau <= 0.0:
        return Comparison(difference, -math.inf, math.inf, 1.0, False, False)
    tau_squared = tau * tau
    log_ratio = msprt_log_ratio(difference, variance, tau_squared)
    half = confidence_half_width(variance, tau_squared, alpha)
    return Comparison(difference, difference - half, difference + half, min(1.0, math.exp(-log_ratio)),
                      log_ratio >= math.log(1.0 / alpha), True)


def mixture_tau(*, control_mean: float, minimum_effect: float) -> float:
    """τ of the mixing distribution: the smallest difference worth finding, `minimum_effect` relative to the control
    (Johari et al. advise a τ of the size of the effects one expects)."""
    return abs(control_mean) * minimum_effect


def normal_quantile(probability: float) -> float:
    """The standard normal quantile (Acklam's rational approximation refined by one Newton step: |error| < 1e-12)."""
    if not 0.0 < probability < 1.0:
        raise ValueError("probability must be in (0, 1)")
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    low = 0.02425
    if probability < low:
        q = math.sqrt(-2 * math.log(probability))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif probability <= 1 - low:
        q = probability - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    else:
        q = math.sqrt(-2 * math.log(1 - probability))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    error = 0.5 * math.erfc(-x / math.sqrt(2)) - probability
    return x - error * math.sqrt(2 * math.pi) * math.exp(x * x / 2)


def horizon(*, control_variance: float, treatment_variance: float, effect: float, tau: float, alpha: float,
            power: float, share: float = 0.5, limit: int = 10**9) -> int:
    """The observations (both arms together) by which a true difference of `effect` is found with probability at
    least `power`. Conservative: it asks the confidence sequence to exclude zero at that one look (P ≈ Φ((effect −
    half width) / s) ≥ power); a sequential test that may stop at any earlier look only does better. `share` is the
    treatment's part of the traffic."""
    if effect == 0 or tau <= 0:
        return limit
    z = normal_quantile(power)
    tau_squared = tau * tau

    def enough(total: int) -> bool:
        n_treatment, n_control = max(1.0, total * share), max(1.0, total * (1 - share))
        variance = control_variance / n_control + treatment_variance / n_treatment
        if variance <= 0:
            return True
        return (abs(effect) - confidence_half_width(variance, tau_squared, alpha)) / math.sqrt(variance) >= z

    low, high = 1, 2
    while not enough(high):
        low, high = high, high * 2
        if high > limit:
            return limit
    while low < high:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle + 1
    return high
