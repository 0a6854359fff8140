"""Highly available test deployments on 127.0.0.1, as plain processes.

Each module starts one clustered service for the HA fault tests and runbooks
(issue 15): ``rabbitmq`` a three-node RabbitMQ cluster, ``postgres`` a primary
with a streaming-replication standby. They start, stop, kill and restart single
members so a test can take one away in the middle of a run; none of them touches
the machine's own services.
"""
