"""The one thing pyproject.toml cannot say: the development package's command exists where its
folder does (a checkout), not in the image, whose build context holds webhook/ alone."""

from pathlib import Path

from setuptools import setup

scripts = ["gpu-queue = webhook.cli:main"]
if (Path(__file__).resolve().parent / "gpu_queue_dev").is_dir():
    scripts.append("gpu-queue-dev = gpu_queue_dev.cli:console_main")

setup(entry_points={"console_scripts": scripts})
