"""The router variants beyond the thesis's router, each the code one registry entry needs.

Labellings (``core.meta.LABELLINGS``): ``balanced`` (class-balanced BCE), ``cost_weighted``
(each sample weighted by what mis-routing it costs), ``border`` (samples near the cost threshold
left out, the cut-off chosen on validation), ``separable`` (a benefit the router can read more
of). Losses (``core.router_losses.LOSSES``): ``focal`` and ``defer`` (a learning-to-defer
surrogate on both exits' correctness). Input kinds (``core.families.INPUT_KINDS``): ``hybrid``
(the logits and a pooled view of z).
"""
