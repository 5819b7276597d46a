"""The evidence kit under every study (``bench``, ``evidence``, ``umsrep_bench``, ``join``): one process pool
(``pool``), one machine record (``machine``), the paired statistics (``stats``, over ``scipy.stats``), what a
finished run folder says (``runs``) and page helpers (``page``). A study keeps its design, its jobs and its page."""
