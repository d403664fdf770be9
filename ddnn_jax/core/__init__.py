"""Pure compute: arrays and frozen configs in, arrays out; no paths, no printing.

``config`` and ``models`` (the DDNN), ``training`` (state, joint loss, jitted step, mesh, compiled
epoch, batched prediction), ``labels`` (costs, benefit thresholds, cost and oracle labels),
``decisions`` (budget-matched offload masks, the oracle, calibrated thresholds), ``mechanisms``
(the registry of decision rules, the reference budget), ``families`` (router families as values),
``router_net`` (the router, its config and inputs), ``router_losses`` (the registry of router
losses), ``router_training`` (the vmapped grid trainer), ``curves`` and ``comparisons`` (operating
points, areas, paired statistics), ``outputs`` (per-sample outputs of a data split), ``optim``
and ``retrace`` (the plateau schedule, a guard against retracing).
"""
