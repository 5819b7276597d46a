"""The hospital side: Flower ClientApp (thin glue over ``uharmony``), SuperNode launcher, hospital tools."""
