"""The network rule for every test and bench process: DDS never leaves loopback.

Parallel runs do not see each other's nodes: same rule as scripts/ros_env.sh, a domain id
1..100 from the pid, QVR_ROS_DOMAIN_ID pins it. No model hub here: anything that tries to
download fails fast instead of hanging. Imported (for its effect) before rclpy is.
"""
import os

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_LOCALHOST_ONLY'] = '1'
os.environ.pop('ROS_STATIC_PEERS', None)
os.environ['ROS_DOMAIN_ID'] = os.environ.get('QVR_ROS_DOMAIN_ID') or str(1 + os.getpid() % 100)
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
