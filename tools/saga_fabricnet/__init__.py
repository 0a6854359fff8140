"""Launcher for a real Hyperledger Fabric test network (official binaries, plain
processes on 127.0.0.1): development and test tooling, not the product runtime.
See README.md."""

from saga_fabricnet.network import FabricNetwork
from saga_fabricnet.options import NetworkOptions
from saga_fabricnet.release import FabricBinaryMissing, FabricRelease

__all__ = ["FabricBinaryMissing", "FabricNetwork", "FabricRelease", "NetworkOptions"]
