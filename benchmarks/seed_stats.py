"""When does a method move a number beyond the spread over seeds? The one rule the methods benchmarks' verdicts use.

A method and its base run with the same seeds (same data, the seed sets initialisation, augmentation and order).
Their per-seed differences d_i = method_i - base_i are tested with a two-sided paired t-test at 5%: the change is
beyond the seed spread when |mean(d)| > t(0.975, n - 1) * sd(d) / sqrt(n), which with three seeds is
|mean(d)| > 2.48 sd(d). A change within the spread is reported as such, whatever its sign.
"""

from __future__ import annotations

import math
import statistics

# two-sided 5% critical values of Student's t by degrees of freedom (n - 1 seeds); more than 6 seeds is not a
# protocol of this project
T_CRITICAL_5_PERCENT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def paired_difference(method: dict[int, float], base: dict[int, float]) -> dict | None:
    """Per-seed values of a method and of its base → the seeds they share, the differences, their mean and sample
    sd, the t statistic and whether the change is beyond the seed spread; None with fewer than two shared seeds."""
    seeds = sorted(set(method) & set(base))
    if len(seeds) < 2:
        return None
    if len(seeds) - 1 not in T_CRITICAL_5_PERCENT:
        raise ValueError(f"{len(seeds)} seeds: the table of t critical values stops at "
                         f"{max(T_CRITICAL_5_PERCENT) + 1}")
    differences = [method[seed] - base[seed] for seed in seeds]
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    if sd == 0:  # every seed moved by the same amount: beyond any spread unless that amount is 0
        t = math.copysign(math.inf, mean) if mean else 0.0
    else:
        t = mean / (sd / math.sqrt(len(seeds)))
    return {"seeds": seeds, "differences": differences, "mean": mean, "sd": sd, "t": t,
            "beyond_spread": abs(t) > T_CRITICAL_5_PERCENT[len(seeds) - 1]}


def difference_text(change: dict | None) -> str:
    """A paired difference of shares in mIoU points: `+1.2 ± 0.3 (+1.0 / +1.5 / +1.1)`, bold when beyond the seed
    spread; "–" for None."""
    if change is None:
        return "–"
    values = " / ".join(f"{100 * d:+.1f}" for d in change["differences"])
    text = f"{100 * change['mean']:+.1f} ± {100 * change['sd']:.1f}"
    return (f"**{text}**" if change["beyond_spread"] else text) + f" ({values})"


def verdict_text(change: dict) -> str:
    """Whether a change the paper says raises a number does so: yes only when it rises beyond the seed spread."""
    if not change["beyond_spread"]:
        return "no: within the spread"
    return "yes: raises it beyond the spread" if change["mean"] > 0 else "no: lowers it beyond the spread"
