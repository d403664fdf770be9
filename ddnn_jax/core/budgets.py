"""The reference budget, in a module without JAX: the edge that runs an exported graph
(``deploy.device_edge``) defaults to it as the JAX edge does."""

REFERENCE_TARGET = 0.54  # L0 of the thesis's single-budget analyses (Fig. 6.3, 6.4, 6.5, 6.12)
