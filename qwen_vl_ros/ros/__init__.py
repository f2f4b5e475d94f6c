"""The ROS 2 node (`describe_node`): a thin translation between ROS and the core."""
