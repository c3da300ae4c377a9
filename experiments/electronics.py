"""MIAN on Amazon Electronics (the paper's Table 2: AUC 0.8913).

Download the 2014 Electronics dumps (reviews_Electronics_5.json + meta_Electronics.json) from
https://jmcauley.ucsd.edu/data/amazon/, or the DIEN layout, or BARS's AmazonElectronics_x1 (train.csv,
test.csv), and point data.dir at the folder: `--set data.dir=path/to/electronics`. Layouts:
mian_jax/data/amazon.py.
"""

from experiments._amazon import amazon_config


def get_config(variant: str = ""):
  return amazon_config("electronics", "data/amazon-electronics", variant)
