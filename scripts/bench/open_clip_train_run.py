"""Runs open_clip_train.main with scripts/bench/*.json registered as model configs (the
benchmark's small architectures are not among open_clip's built-in ones).

Run: $(scripts/refvenv.sh) scripts/bench/open_clip_train_run.py --model open_clip_fmnist ...
"""
import os
import sys

import open_clip
from open_clip_train.main import main

open_clip.add_model_config(os.path.dirname(os.path.abspath(__file__)))
main(sys.argv[1:])
