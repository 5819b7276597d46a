"""Message keys shared by the ClientApp and the ServerApp (plain strings: no Flower import)."""

ARRAYS = "arrays"  # ArrayRecord: model state entries
CONFIG = "config"  # ConfigRecord: server -> client settings
METRICS = "metrics"  # MetricRecord: client -> server numbers
SITE = "site"  # ConfigRecord: client -> server identity (site-id, domain-id, skipped cases)

NUM_EXAMPLES = "num-examples"  # training cases (train) or validation cases (evaluate), never batches
SERVER_ROUND = "server-round"
MODEL_SPEC = "model-spec"  # JSON of uharmony.UHarmonyNet.spec: clients build the same network
STRATEGY = "strategy"
LOCAL_STEPS = "local-steps"
LR = "lr"
PROXIMAL_MU = "proximal-mu"
SEED = "seed"

SITE_ID = "site-id"
DOMAIN_ID = "domain-id"
SKIPPED = "skipped-cases"
TRAIN_LOSS = "train-loss"
UPDATE_BYTES = "update-bytes"


def metric_key(region: str, mode: str, metric: str = "dice") -> str:
    """e.g. ``dice-wt-gated`` / ``hd95-et-oracle``."""
    return f"{metric}-{region.lower()}-{mode}"

# Joining: the server asks every SuperNode it has not admitted yet for its profile (a query message,
# action PROFILE_ACTION) and extends the model for what the site brings before it trains.
PROFILE_ACTION = "profile"  # message type "query.profile"
PROFILE = "profile"  # ConfigRecord: client -> server, the site's declared profile (no statistics, no data)
MODALITIES = "modalities"  # comma-separated modality names the site acquires
REGIONS = "regions"  # comma-separated output regions its labelling protocol annotates
TRAIN_CASES = "train-cases"
READY = "ready"  # False: the SuperNode is up but the site does not take part yet (simulated late join)
