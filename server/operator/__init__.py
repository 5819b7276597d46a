"""The coordinator's tools, beside the round engine and never imported by it: the PKI (``pki``), the site and
app registries' commands (``coordinator``, ``app_bundle``, ``app_registry``), the guarded SuperLink and its nginx
gateway (``guarded_superlink``, ``gateway``), the Control API client (``control_api``) and deployed runs with
their progress and status (``deployed_runs``, ``progress``, ``consortium_status``)."""
