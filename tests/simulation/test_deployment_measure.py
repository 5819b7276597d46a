"""The deployment measurement's request count, read from nginx's access log (combined format)."""

from simulation.deployment import fleet_requests


def test_fleet_requests_are_counted_per_endpoint_from_the_gateway_log(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        '127.0.0.1 - - [24/Nov/2026:21:33:59 +0000] "POST /v1/fleet/pull-object HTTP/1.1" 200 512 "-" "grpc"\n'
        '127.0.0.1 - - [24/Nov/2026:21:34:00 +0000] "POST /v1/fleet/pull-object?x=1 HTTP/1.1" 200 9 "-" "-"\n'
        '127.0.0.1 - - [24/Nov/2026:21:34:01 +0000] "POST /v1/fleet/push-messages HTTP/1.1" 200 9 "-" "-"\n'
        '127.0.0.1 - - [24/Nov/2026:21:34:02 +0000] "POST /v1/control/register-node HTTP/1.1" 403 9 "-" "-"\n'
        "a truncated line\n"
    )
    assert fleet_requests(log) == {"pull-object": 2, "push-messages": 1}
