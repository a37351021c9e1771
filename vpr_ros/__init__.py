"""vpr_ros: the ROS 2 side of the loop-closure node (messages, parameters, threads, services)."""
