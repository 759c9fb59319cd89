"""``python -m editnb.bench ...`` = ``editnb bench ...``; also the entry point for
``accelerate launch -m editnb.bench run ...`` (items are sharded across processes)."""
import sys

from ..cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))
