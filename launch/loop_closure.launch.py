"""Start the vpr_ros loop-closure node with a parameters file (default: config/default.yaml).

    ros2 launch vpr_ros loop_closure.launch.py image_topic:=/camera/image_raw namespace:=robot1
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("vpr_ros"), "config", "default.yaml")
    config_file = LaunchConfiguration("config_file")
    image_topic = LaunchConfiguration("image_topic")
    compressed_topic = LaunchConfiguration("compressed_topic")
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=default_config,
                              description="YAML parameters file (model, map, detector, node)"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="sensor_msgs/Image topic to subscribe to"),
        DeclareLaunchArgument("compressed_topic", default_value="image/compressed",
                              description="sensor_msgs/CompressedImage topic ('' disables it)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
        Node(
            package="vpr_ros",
            executable="loop_closure_node",
            name="loop_closure_node",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[config_file, {
                "use_sim_time": LaunchConfiguration("use_sim_time"),
                "node.image_topic": image_topic,
                "node.compressed_topic": compressed_topic,
            }],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        ),
    ])
