"""Thin ROS 2 layer: message conversions, parameters and nodes."""
