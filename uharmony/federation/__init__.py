"""The federation's logic without Flower: the strategy table (``strategies``), the typed run config (``config``),
what a site sends, keeps and receives (``federated``), a site's round (``site_round``, with UMS-Rep's phases in
``umsrep_round``), the site's state folder (``site_state``) and packed model entries (``wire``). The top layer
of ``uharmony``: the Flower apps in ``client/`` and ``server/`` sit on it."""
