"""The edge–cloud deployment: the wire format between the halves (``wire``), the cloud half as a
service (``cloud``), and the edge half as its client (``client``, ``edge_half``, ``rules``,
``edge``, ``sweep``)."""
