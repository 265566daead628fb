"""``python -m posttrain.world build [--out DIR] [--quick]`` or ``report [--out DIR]`` (``posttrain.world.build``)."""

from .build import main

main()
