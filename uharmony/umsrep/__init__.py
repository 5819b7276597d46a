"""UMS-Rep in the federation (Flower-free): label-free denoising pretraining of the segmentation trunk
(phase P), task heads and fine-tuning plans (phase F), derivable outputs. See docs/umsrep.md."""
