"""Adapters implementing the ports: SQL store, RabbitMQ, Hyperledger Fabric, Prometheus."""
