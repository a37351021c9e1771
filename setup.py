"""ament_python package vpr_ros: vpr_core (no ROS), vpr_ros (the node), offline_eval (benchmarks)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vpr_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["vpr_core", "vpr_core.*", "vpr_ros", "vpr_ros.*",
                                    "offline_eval", "offline_eval.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vpr_ros maintainers",
    maintainer_email="maintainers@vpr-ros.org",
    description="ROS 2 loop-closure node based on visual place recognition",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "loop_closure_node = vpr_ros.node:main",
            "vpr-core = vpr_core.cli:main",
            "vpr-benchmark = offline_eval.benchmark:main",
            "vpr-demo = offline_eval.demo:main",
            "vpr-closures = offline_eval.closures:main",
            "vpr-pose-benchmark = offline_eval.pose_benchmark:main",
        ],
    },
)
