"""The edge–cloud deployment: the wire format between the halves (``wire``), the cloud half as a
service (``cloud``), the edge half as its client (``client``, ``edge_half``, ``rules``,
``uplink``, ``stream``, ``edge``, ``sweep``), and the edge that runs an exported graph without
JAX (``exported``, ``runtimes``, ``device_edge``)."""
