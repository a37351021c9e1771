"""vpr_core: visual place recognition for loop closure, with no ROS dependency."""
__version__ = "0.1.0"
