"""`python -m edgekit.build.targets.tfjs`: the TF.js writer's process (see writer.py)."""
from edgekit.build.targets.tfjs.writer import main

main()
