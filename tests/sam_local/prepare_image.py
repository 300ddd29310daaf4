#!/usr/bin/env python3
"""Builds the image `sam local invoke` runs functions in, before the first invocation needs it.

SAM builds this image (the base image plus its runtime interface emulator) on the first
invocation, through a Docker client whose socket reads time out after 60 s. On a slow or
loaded machine one build step under qemu can stay silent for longer, and the invocation
then fails with `ReadTimeout` for a reason that has nothing to do with the function. Here
the same build runs through SAM's own code (`LambdaImage.build`, so the Dockerfile and the
tag are exactly the ones SAM would make) with a client that waits up to --timeout seconds.
SAM then finds the image and does not build it again.

Run with the SAM CLI's Python (.venv-sam), DOCKER_HOST naming the daemon:

    .venv-sam/bin/python tests/sam_local/prepare_image.py --runtime provided.al2023 --arch arm64
"""

import argparse
import os
import sys
import tempfile
import time

import docker
from samcli.lib.utils.stream_writer import StreamWriter
from samcli.local.docker.lambda_image import LambdaImage
from samcli.local.layers.layer_downloader import LayerDownloader


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", required=True, help="the functions' Runtime, e.g. provided.al2023")
    parser.add_argument("--arch", required=True, help="the functions' architecture, e.g. arm64")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one Docker API read may take")
    args = parser.parse_args()
    started = time.monotonic()
    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], timeout=args.timeout)
    with tempfile.TemporaryDirectory() as layer_cache:
        # No layers: the functions are single static-enough binaries (template.yaml).
        layers = LayerDownloader(layer_cache, os.getcwd(), [])
        image = LambdaImage(layers, skip_pull_image=True, force_image_build=False, docker_client=client)
        tag = image.build(args.runtime, "Zip", None, [], args.arch, stream=StreamWriter(sys.stderr))
    print(f"\n{tag}: ready in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
