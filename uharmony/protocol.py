"""Message keys shared by the ClientApp and the ServerApp (plain strings: no Flower import).

Records of a message: ``ARRAYS`` (``flwr.app.ArrayRecord`` of model entries), ``CONFIG`` (server ->
site settings), ``METRICS`` (site -> server numbers), ``SITE`` (site -> server identity), ``PROFILE``
(site -> server, answer to the profile query). Between the apps ``ARRAYS`` travels packed (one array and
the ``WIRE`` manifest, ``uharmony.federation.wire``); the handlers on either side see it unpacked.
"""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
EVALUATION = "evaluation"  # a train reply's evaluation of the received model (the METRICS of an evaluate reply)
WIRE = "wire"  # ConfigRecord: the manifest of a packed ARRAYS record (uharmony.federation.wire), either direction

# CONFIG: server -> site
SERVER_ROUND = "server-round"
MODEL_SPEC = "model-spec"  # JSON of uharmony.UHarmonyNet.spec: clients build the same network
STRATEGY = "strategy"  # a name of uharmony.federation.strategies: decides which entries a site keeps
RUN_ID = "run-id"  # one per run (kept on resume): site state saved under another run is not reused
LOCAL_STEPS = "local-steps"
LR = "lr"
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx; a site adds the proximal term when > 0
SEED = "seed"  # the round's seed (the site adds its domain)
POOLED = "pooled"  # True: this member trains on every site's data (the centralized baseline)
EVALUATE_FIRST = "evaluate-first"  # train: > 0 = evaluate the received model (aggregated in that round) first
CROSS_EXPERTS = "cross-experts"  # evaluate: also score each domain expert on the site's data (final round)

# METRICS: site -> server
NUM_EXAMPLES = "num-examples"  # training cases (train) or validation cases (evaluate), never batches
TRAIN_LOSS = "train-loss"
STEPS = "steps"
SECONDS = "seconds"
SKIPPED = "skipped-cases"  # how many of the site's cases were unusable
UPDATE_BYTES = "update-bytes"
TYPE_ACCURACY = "type-accuracy-gated"  # the type head's accuracy over the site's typed validation scans
TYPE_CASES = "type-cases"  # how many of them were scored (0: the accuracy is nan, not sent on)
GATE_ACCURACY = "gate-accuracy"  # fraction of the validation scans the scan gate gives to the site's domain
GATE_WEIGHT = "gate-weight"  # mean gate probability of the site's own domain over its validation scans
GATE_UNSEEN = "gate-unseen"  # fraction of its validation scans the gate found beyond every domain's reach

# SITE: site -> server
SITE_ID = "site-id"
DOMAIN_ID = "domain-id"
SKIPPED_LIST = "skipped"  # one line per skipped case: "<category> case <keyed hash of its id>"


def metric_key(region: str, mode: str, metric: str = "dice") -> str:
    """e.g. ``dice-wt-gated`` / ``hd95-et-oracle`` / ``dice-tc-expert2`` (cross-site table)."""
    return f"{metric}-{region.lower()}-{mode}"


def expert_mode(domain: int) -> str:
    return f"expert{int(domain)}"


# Joining: the server asks every SuperNode it has not admitted yet for its profile (a query message,
# action PROFILE_ACTION) and extends the model for what the site brings before it trains.
PROFILE_ACTION = "profile"  # message type "query.profile"
PROFILE = "profile"  # ConfigRecord: client -> server, the site's declared profile (no statistics, no data)
MODALITIES = "modalities"  # comma-separated modality names the site acquires
REGIONS = "regions"  # comma-separated output regions its labelling protocol annotates
TRAIN_CASES = "train-cases"
LABELLED = "labelled"  # False: a label-free site (regions empty): it takes part in label-free work only
READY = "ready"  # False: the SuperNode is up but the site does not take part yet (simulated late join)

# Prototypes of the scan gate: before every evaluation the server asks the sites (a query message, action
# PROTOTYPE_ACTION, with the aggregated model) for their domain's prototype under that model: mean,
# variance and count of their training scans' descriptors (``uharmony.model.gating``), and merges them per domain.
PROTOTYPE_ACTION = "prototype"  # message type "query.prototype"

# UMS-Rep (uharmony.umsrep): the run config's ``phase`` decides what a train / evaluate message means at a
# site (denoising in phase P). CALIBRATE_ACTION ("query.calibrate"): re-estimate the site's harmonization
# statistics on clean scans under the model sent, keep them at the site, answer with counts only (a
# label-free site in phase F, every site when phase P ends).
CALIBRATE_ACTION = "calibrate"
DENOISE_PREFIXES = ("psnr-noisy-", "psnr-denoised-", "ssim-noisy-", "ssim-denoised-", "psnr-clean-", "intrinsic-noise")
# against a case's noise-free reference (when its site has them): psnr-clean-{noisy,denoised}-<level index>, and
# level "s" for the scan as acquired (no added noise); intrinsic-noise: the RMS of scan - reference (brain SD)
INTRINSIC_NOISE = "intrinsic-noise"
VAL_LOSS = "val-loss"  # phase P: masked MSE of the denoised validation scans at the middle noise level
