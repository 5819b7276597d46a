"""Small gated U-Harmony model and Flower reply messages as a site's ClientApp sends them."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from uharmony import build_model
from uharmony import protocol as P
from uharmony.federation.federated import ModelRoles, global_state_of


@pytest.fixture
def setup():
    model = build_model("dynunet", 4, 3, 2, "uharmony", filters=(8, 16, 32), stem_channels=4)
    roles = ModelRoles(model, "uharmony")
    return roles, global_state_of(model, roles)


def request(node: int, kind: str = "train") -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    msg = Message(RecordDict(), node, kind)
    msg.metadata.__dict__["_message_id"] = f"m{node}-{kind}"
    return msg


def reply(arrays, weight=2, domain=0, node=7, site=None, metrics=None) -> Message:
    """A train reply of ``node`` (site ``s<node>`` unless given)."""
    record = arrays if isinstance(arrays, ArrayRecord) else ArrayRecord(arrays)
    content = RecordDict(
        {
            P.ARRAYS: record,
            P.METRICS: MetricRecord({P.NUM_EXAMPLES: weight, **(metrics or {})}),
            P.SITE: ConfigRecord({P.SITE_ID: site or f"s{node}", P.DOMAIN_ID: domain}),
        }
    )
    return Message(content, reply_to=request(node))


def eval_reply(metrics: dict, node=7, site=None) -> Message:
    content = RecordDict({P.METRICS: MetricRecord(metrics), P.SITE: ConfigRecord({P.SITE_ID: site or f"s{node}"})})
    return Message(content, reply_to=request(node, "evaluate"))


def update(roles, state, domain, value) -> dict:
    return {k: torch.full_like(state[k], value) for k in roles.outgoing_keys(domain)}
