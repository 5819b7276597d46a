"""The model (Flower-free): U-Harmony's normalization (``norm``), the domain-gated head (``head``, ``gating``,
``routing``, ``fingerprint``), the MONAI networks (``networks``, ``task_heads``), parameter roles (``roles``),
growing a model (``adaptation``), local training and evaluation (``training``, ``lesionwise``) and inference
(``inference``). Imports only the base modules of ``uharmony`` (names, checks, precision)."""
