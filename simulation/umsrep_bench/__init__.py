"""The UMS-Rep evidence (docs/umsrep.md): label efficiency, cost to a target, strategies, denoising."""
