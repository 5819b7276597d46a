"""What a run and a release write (Flower-free): checkpoints and signed models (``checkpoint``, ``signing``,
``release``, ``deployable``), MONAI bundles (``export``, ``bundle_parts``, ``bundle_trust``), run logs, plots and
tracking (``runlog``, ``plots``, ``tracking``). Built on the model and the data layer; never on the federation."""
