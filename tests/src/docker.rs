//! Docker fixtures: swarm, the proxy network, fixture images, the abra test double.
