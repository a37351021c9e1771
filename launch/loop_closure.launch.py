"""Start the vpr_ros loop-closure node with a parameters file (default: config/default.yaml).

    ros2 launch vpr_ros loop_closure.launch.py image_topic:=/camera/image_raw namespace:=robot1

Several cameras: list them in the parameters file (`node.image_topics`) and leave `image_topic` empty.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context):
    """The node, with `node.image_topic` overridden only when the argument is given: an empty override
    would replace the parameters file's camera list."""
    overrides = {
        "use_sim_time": LaunchConfiguration("use_sim_time"),
        "node.compressed_topic": LaunchConfiguration("compressed_topic"),
    }
    image_topic = LaunchConfiguration("image_topic").perform(context)
    if image_topic:
        overrides["node.image_topic"] = image_topic
    return [Node(
        package="vpr_ros",
        executable="loop_closure_node",
        name="loop_closure_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("config_file"), overrides],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )]


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("vpr_ros"), "config", "default.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=default_config,
                              description="YAML parameters file (model, map, detector, node)"),
        DeclareLaunchArgument("image_topic", default_value="",
                              description="one sensor_msgs/Image topic, replacing node.image_topics "
                                          "('' = the parameters file's list)"),
        DeclareLaunchArgument("compressed_topic", default_value="image/compressed",
                              description="sensor_msgs/CompressedImage topic ('' disables it)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
        OpaqueFunction(function=_node),
    ])
