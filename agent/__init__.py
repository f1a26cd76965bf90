"""The meshserve agent: one per MLServer replica.

It registers the replica with the scheduler (``seldon.mlops.agent.AgentService``), fetches model
artifacts into MLServer's model repository, loads and unloads them through MLServer's repository
API, and reports the outcome. Envoy talks to MLServer directly; the agent is never on the
inference path.
"""
