"""MIAN on Amazon Books (the paper's Table 2: AUC 0.8209).

Download the 2014 Books dumps (reviews_Books_5.json + meta_Books.json) from
https://jmcauley.ucsd.edu/data/amazon/, or the DIEN reference's prepared files (local_train_splitByUser,
local_test_splitByUser and the vocabulary pickles), or BARS's AmazonBooks_x1 (train.csv, test.csv),
and point data.dir at the folder: `--set data.dir=path/to/books`. Layouts: mian_jax/data/amazon.py.
"""

from experiments._amazon import amazon_config


def get_config(variant: str = ""):
  return amazon_config("books", "data/amazon-books", variant)
