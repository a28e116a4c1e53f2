"""Hopfield pooling: attention of the map's positions to a query pattern."""
