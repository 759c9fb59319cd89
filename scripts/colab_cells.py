"""Rewrite (or, with --check, check) each chapter's Colab badge and install block from
editnb.colab.REPOSITORY, the one repository address: python scripts/colab_cells.py [--check] [NOTEBOOK ...]"""
from editnb.colab import main

raise SystemExit(main())
