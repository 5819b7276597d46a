"""A site joins a running federation with a new modality and a new label class (``uharmony-join``)."""
